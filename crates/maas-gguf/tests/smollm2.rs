//! The real SmolLM2-135M-Instruct Q4_1 file (scripts/fetch-models), and the
//! reader's behaviour on damaged copies of it.

#![allow(clippy::unwrap_used)]

use maas_gguf::{Gguf, GgufFile, TensorType};
use rand::{Rng, SeedableRng};
use std::path::PathBuf;

fn path() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let base = std::env::var("MAAS_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("models"));
    let p = base.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-models",
        p.display()
    );
    p
}

#[test]
fn the_smollm2_file_has_the_expected_metadata_and_tensors() {
    let f = GgufFile::open(&path()).unwrap();
    let g = &f.gguf;
    assert_eq!(g.version, 3);
    assert_eq!(g.str("general.architecture").unwrap(), "llama");
    assert_eq!(g.u64("llama.block_count").unwrap(), 30);
    assert_eq!(g.u64("llama.embedding_length").unwrap(), 576);
    assert_eq!(g.u64("llama.feed_forward_length").unwrap(), 1536);
    assert_eq!(g.u64("llama.attention.head_count").unwrap(), 9);
    assert_eq!(g.u64("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(
        g.get("llama.rope.freq_base").and_then(|v| v.as_f64()),
        Some(100000.0)
    );
    assert_eq!(g.str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(
        g.get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map(<[_]>::len),
        Some(49152)
    );
    assert_eq!(
        g.get("tokenizer.ggml.merges")
            .and_then(|v| v.as_array())
            .map(<[_]>::len),
        Some(48900)
    );
    assert_eq!(g.u64("tokenizer.ggml.bos_token_id").unwrap(), 1);
    assert_eq!(g.u64("tokenizer.ggml.eos_token_id").unwrap(), 2);
    assert!(g
        .str("tokenizer.chat_template")
        .unwrap()
        .contains("<|im_start|>"));

    assert_eq!(g.tensors.len(), 272);
    let count = |k: TensorType| g.tensors.iter().filter(|t| t.kind == k).count();
    assert_eq!(
        (
            count(TensorType::Q4_1),
            count(TensorType::F32),
            count(TensorType::Q8_0)
        ),
        (210, 61, 1)
    );
    assert!(
        g.tensor("output.weight").is_none(),
        "the output head is tied to the embeddings"
    );
    let emb = g.tensor("token_embd.weight").unwrap();
    assert_eq!(
        (emb.kind, emb.dims.as_slice()),
        (TensorType::Q8_0, &[576u64, 49152][..])
    );

    let e = f.tensor_f32("token_embd.weight").unwrap();
    assert_eq!(e.len(), 576 * 49152);
    assert!(e.iter().all(|v| v.is_finite()));
    let q = f.tensor_f32("blk.0.attn_q.weight").unwrap();
    assert_eq!(q.len(), 576 * 576);
    let mean_abs = q.iter().map(|v| v.abs()).sum::<f32>() / q.len() as f32;
    assert!(
        mean_abs > 1e-3 && mean_abs < 1.0,
        "plausible weights, mean |w| = {mean_abs}"
    );
    let norm = f.tensor_f32("blk.0.attn_norm.weight").unwrap();
    assert_eq!(norm.len(), 576);
}

#[test]
fn truncated_or_corrupted_files_give_errors_never_panics() {
    let mut buf = std::fs::read(path()).unwrap();
    let ok = Gguf::parse(&buf).unwrap();
    let header_end = ok.tensors.iter().map(|t| t.file_offset).min().unwrap();
    // Every cut inside the header and at a few places in the data.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut cuts: Vec<usize> = (0..64)
        .chain((0..400).map(|_| rng.random_range(0..header_end)))
        .collect();
    cuts.extend([header_end, header_end + 1, buf.len() / 2, buf.len() - 1]);
    for cut in cuts {
        assert!(
            Gguf::parse(&buf[..cut]).is_err(),
            "a file cut at {cut} bytes parsed"
        );
    }
    // Random byte changes in the header: any result but a panic.
    let mut errors = 0;
    for _ in 0..3000 {
        let at = rng.random_range(0..header_end.min(1 << 20));
        let old = buf[at];
        buf[at] = rng.random();
        if Gguf::parse(&buf).is_err() {
            errors += 1;
        }
        buf[at] = old;
    }
    assert!(errors > 0, "some of the corruptions must be detected");
    assert!(Gguf::parse(b"GGUF").is_err());
    assert!(Gguf::parse(b"NOPE\x03\x00\x00\x00").is_err());
}
