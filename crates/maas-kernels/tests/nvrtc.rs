//! Every CUDA kernel compiles with NVRTC for compute_90 (Hopper), without
//! warnings, and defines the entry points the launchers use. Needs libnvrtc
//! (scripts/test installs the `nvidia-cuda-nvrtc-cu12` wheel and puts it on
//! LD_LIBRARY_PATH); no GPU is needed.

#![allow(clippy::unwrap_used)]

use maas_kernels::cuda::{compile, nvrtc_available, SOURCES};

#[test]
fn every_cuda_kernel_compiles_for_compute_90_without_warnings() {
    if std::env::var_os("MAAS_SKIP_NVRTC").is_some() && !nvrtc_available() {
        eprintln!("MAAS_SKIP_NVRTC is set and libnvrtc is absent: not compiling");
        return;
    }
    assert!(
        nvrtc_available(),
        "libnvrtc.so.12 not found: run scripts/test, or set LD_LIBRARY_PATH to its folder"
    );
    for (name, src, kernels) in SOURCES {
        let out = compile(name, src, "compute_90").unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !out.log.to_lowercase().contains("warning"),
            "{name} compiled with warnings:\n{}",
            out.log
        );
        for k in *kernels {
            assert!(
                out.ptx.contains(&format!(".entry {k}(")),
                "{name}: no entry point {k} in the PTX"
            );
        }
        assert!(
            out.ptx.contains(".target sm_90"),
            "{name}: PTX is not for sm_90"
        );
    }
}

#[test]
fn a_kernel_with_an_error_is_reported_with_the_compiler_log() {
    if !nvrtc_available() {
        assert!(
            std::env::var_os("MAAS_SKIP_NVRTC").is_some(),
            "libnvrtc.so.12 not found"
        );
        return;
    }
    let err = compile(
        "broken.cu",
        "extern \"C\" __global__ void broken() { not_declared = 1; }",
        "compute_90",
    )
    .unwrap_err();
    assert!(err.contains("not_declared"), "{err}");
}
