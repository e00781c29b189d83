//! all-MiniLM-L6-v2 against sentence-transformers' own output (committed in
//! tests/data, written by scripts/reference/minilm.py). Needs the model files:
//! `scripts/fetch-models`.

#![allow(clippy::unwrap_used)]

use maas_models::{EmbedInput, Embedder, Precision};
use serde_json::Value;
use std::path::PathBuf;

fn model_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let base = std::env::var("MAAS_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("models"));
    let dir = base.join("all-minilm-l6-v2");
    assert!(
        dir.join("model.safetensors").exists(),
        "{} is missing: run scripts/fetch-models",
        dir.display()
    );
    dir
}

/// CPU, or the GPU when `MAAS_WORKER_DEVICE=cuda:N` (scripts/gpu-check).
fn load() -> Embedder {
    load_in(Precision::F16)
}

fn load_in(precision: Precision) -> Embedder {
    let device: maas_models::Device = std::env::var("MAAS_WORKER_DEVICE")
        .unwrap_or_else(|_| "cpu".into())
        .parse()
        .unwrap();
    eprintln!("running on {device:?} in {precision:?}");
    Embedder::load_with(&model_dir(), device, precision).unwrap()
}

fn cases() -> Vec<Value> {
    let raw = include_str!("data/minilm_reference.json");
    let v: Value = serde_json::from_str(raw).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * y).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn word_pieces_match_the_reference_tokenizer_including_truncation() {
    let e = load();
    let cases = cases();
    assert!(cases.len() >= 40);
    let inputs: Vec<EmbedInput> = cases
        .iter()
        .map(|c| EmbedInput::Text(c["input"].as_str().unwrap().into()))
        .collect();
    let ids = e.tokenize(&inputs).unwrap();
    let mut truncated = 0;
    for (c, got) in cases.iter().zip(&ids) {
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(got, &want, "ids of {:?}", c["input"]);
        truncated += usize::from(got.len() == 256);
    }
    assert!(
        truncated >= 1,
        "at least one case exercises truncation at 256"
    );
}

#[test]
fn every_embedding_has_cosine_at_least_0_9999_with_the_reference() {
    let e = load();
    let cases = cases();
    let inputs: Vec<EmbedInput> = cases
        .iter()
        .map(|c| EmbedInput::Text(c["input"].as_str().unwrap().into()))
        .collect();
    // One packed batch of everything, and each input alone: both must match.
    let batch = e.embed(&inputs).unwrap();
    let mut worst = 1.0f64;
    for (i, c) in cases.iter().enumerate() {
        let want: Vec<f64> = c["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let alone = e.embed(&inputs[i..=i]).unwrap();
        for got in [&batch.vectors[i], &alone.vectors[0]] {
            assert_eq!(got.len(), 384);
            let cos = cosine(got, &want);
            worst = worst.min(cos);
            assert!(cos >= 0.9999, "cosine {cos} for {:?}", c["input"]);
        }
        assert_eq!(batch.tokens[i], c["ids"].as_array().unwrap().len());
    }
    eprintln!("worst cosine over {} cases: {worst:.7}", cases.len());
}

#[test]
fn int8_embeddings_have_cosine_at_least_0_999_on_the_cpu_and_on_average_0_9995_with_the_reference()
{
    let e = load_in(Precision::Int8);
    assert_eq!(e.precision(), Precision::Int8);
    // The CPU keeps each sequence's [CLS] and [SEP] rows in f16; the GPU does
    // not yet, and runs ff2 in f32 instead (bert_gpu.rs).
    let floor = if e.device() == maas_models::Device::Cpu {
        0.999
    } else {
        0.998
    };
    let cases = cases();
    let inputs: Vec<EmbedInput> = cases
        .iter()
        .map(|c| EmbedInput::Text(c["input"].as_str().unwrap().into()))
        .collect();
    // Packed and alone give the same vectors: activations are quantised per
    // token row, so a row's neighbours in the batch do not change it.
    let batch = e.embed(&inputs).unwrap();
    let (mut worst, mut sum) = (1.0f64, 0.0f64);
    for (i, c) in cases.iter().enumerate() {
        let want: Vec<f64> = c["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let alone = e.embed(&inputs[i..=i]).unwrap();
        let b: Vec<f64> = batch.vectors[i].iter().map(|v| f64::from(*v)).collect();
        assert!(cosine(&alone.vectors[0], &b) > 0.99999, "batch vs alone");
        let cos = cosine(&batch.vectors[i], &want);
        worst = worst.min(cos);
        sum += cos;
        assert!(cos >= floor, "int8 cosine {cos} for {:?}", c["input"]);
    }
    let mean = sum / cases.len() as f64;
    eprintln!(
        "int8: worst cosine over {} cases {worst:.6}, mean {mean:.6}",
        cases.len()
    );
    assert!(mean >= 0.9995, "int8 mean cosine {mean}");
}

#[test]
fn token_id_inputs_embed_like_the_same_text() {
    let e = load();
    let text = EmbedInput::Text("The quick brown fox".into());
    let ids = e.tokenize(std::slice::from_ref(&text)).unwrap()[0].clone();
    let inner: Vec<u32> = ids[1..ids.len() - 1].to_vec();
    let a = e.embed(&[text]).unwrap();
    let b = e.embed(&[EmbedInput::Ids(inner)]).unwrap();
    let want: Vec<f64> = a.vectors[0].iter().map(|v| f64::from(*v)).collect();
    assert!(cosine(&b.vectors[0], &want) > 0.999999);
    assert!(
        e.embed(&[EmbedInput::Ids(vec![999_999])]).is_err(),
        "ids outside the vocabulary are refused"
    );
}
