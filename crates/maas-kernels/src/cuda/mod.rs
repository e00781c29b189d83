//! CUDA versions of the ops, as CUDA C compiled at run time by NVRTC
//! (through cudarc, loaded dynamically: building needs no CUDA, and a machine
//! without it only loses the GPU path). One `.cu` file per op family under
//! `cuda/`, with the same semantics as the CPU op of the same name.
//!
//! [`Gpu`] compiles them for the device at hand, loads them, and offers one
//! typed launcher per op on device buffers. All launches go to one stream, in
//! order; only downloads synchronise.

mod gpu;
pub use gpu::{Gpu, GpuError};

use std::ffi::{CStr, CString};

const COMMON: &str = include_str!("../../cuda/common.cuh");

/// Every kernel source: (file, source, kernels it defines).
pub const SOURCES: &[(&str, &str, &[&str])] = &[
    (
        "linear.cu",
        include_str!("../../cuda/linear.cu"),
        &["linear_f32"],
    ),
    (
        "int8.cu",
        include_str!("../../cuda/int8.cu"),
        &["quantize_rows_i8", "linear_i8"],
    ),
    (
        "norm.cu",
        include_str!("../../cuda/norm.cu"),
        &["add_layer_norm_f32", "layer_norm_f32"],
    ),
    (
        "elementwise.cu",
        include_str!("../../cuda/elementwise.cu"),
        &["gelu_f32", "embed_f32"],
    ),
    (
        "attention.cu",
        include_str!("../../cuda/attention.cu"),
        &["attention_f32"],
    ),
    (
        "pool.cu",
        include_str!("../../cuda/pool.cu"),
        &["mean_pool_l2_f32"],
    ),
    (
        "llama.cu",
        include_str!("../../cuda/llama.cu"),
        &[
            "rms_norm_f32",
            "rope_f32",
            "swiglu_f32",
            "q4_1_matmul_f32",
            "q8_0_matmul_f32",
            "q8_0_embed_f32",
            "kv_attention_f32",
        ],
    ),
];

/// The source with the shared header inlined (NVRTC has no file system here).
pub fn source(src: &str) -> String {
    src.replace("#include \"common.cuh\"", COMMON)
}

/// Whether libnvrtc can be loaded (cudarc would panic on first use otherwise).
pub fn nvrtc_available() -> bool {
    // SAFETY: only probes whether the shared library can be opened.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Whether the CUDA driver can be loaded.
pub fn driver_available() -> bool {
    // SAFETY: only probes whether the shared library can be opened.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// PTX and the compiler's log of one source.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub ptx: String,
    pub log: String,
}

/// Compiles one source for a virtual architecture (e.g. `compute_90`).
pub fn compile(name: &str, src: &str, arch: &str) -> Result<Compiled, String> {
    use cudarc::nvrtc::result;
    if !nvrtc_available() {
        return Err("libnvrtc.so.12 not found (put its folder on LD_LIBRARY_PATH)".into());
    }
    let code = CString::new(source(src)).map_err(|e| e.to_string())?;
    let cname = CString::new(name).map_err(|e| e.to_string())?;
    let prog = result::create_program(&code, Some(&cname)).map_err(|e| format!("{name}: {e:?}"))?;
    let options = [
        format!("--gpu-architecture={arch}"),
        "--std=c++17".into(),
        "--fmad=true".into(),
    ];
    // SAFETY: `prog` was created above and is destroyed once below; the
    // buffers returned by NVRTC are NUL-terminated C strings.
    unsafe {
        let compiled = result::compile_program(prog, &options);
        let log = result::get_program_log(prog)
            .map(|raw| CStr::from_ptr(raw.as_ptr()).to_string_lossy().into_owned())
            .unwrap_or_default();
        let out = match compiled {
            Ok(()) => result::get_ptx(prog)
                .map(|raw| Compiled {
                    ptx: CStr::from_ptr(raw.as_ptr()).to_string_lossy().into_owned(),
                    log: log.clone(),
                })
                .map_err(|e| format!("{name}: no PTX: {e:?}")),
            Err(e) => Err(format!("{name}: {e:?}\n{log}")),
        };
        let _ = result::destroy_program(prog);
        out
    }
}
