//! Engine-alone throughput on a Batch API input file: every line's input
//! tokenized and embedded in file order, in forward passes of at most
//! `max_batch_tokens` word pieces (the worker's `MAAS_EMBED_MAX_BATCH_TOKENS`),
//! which is what a saturated worker does with a batch's lines, without the
//! rest of the platform (no queue, no database, no JSON).
//!
//!     cargo run --release -p maas-models --example embed_lines -- models lines.jsonl [max_batch_tokens] [f16|int8]
//!
//! Prints one JSON object: lines, seconds, lines per second, passes.

#![allow(clippy::unwrap_used)]

use maas_models::{EmbedInput, Embedder, Precision};
use std::io::BufRead;
use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(args.get(1).map_or("models", String::as_str)).join("all-minilm-l6-v2");
    let file = args.get(2).expect("a .jsonl Batch API input file");
    let budget: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let precision: Precision = args.get(4).map_or(Precision::F16, |p| p.parse().unwrap());
    let mut inputs: Vec<String> = Vec::new();
    for line in std::io::BufReader::new(std::fs::File::open(file).unwrap()).lines() {
        let line = line.unwrap();
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        match &v["body"]["input"] {
            serde_json::Value::String(s) => inputs.push(s.clone()),
            serde_json::Value::Array(a) => {
                inputs.extend(a.iter().map(|s| s.as_str().unwrap().to_owned()))
            }
            other => panic!("unexpected input {other}"),
        }
    }
    let e = Embedder::load_with(&dir, maas_models::Device::Cpu, precision).unwrap();
    // Warm-up on the first few inputs.
    let warm: Vec<EmbedInput> = inputs
        .iter()
        .take(8)
        .map(|s| EmbedInput::Text(s.clone()))
        .collect();
    e.embed(&warm).unwrap();
    let start = Instant::now();
    let (mut passes, mut pass, mut tokens, mut rows) = (0usize, Vec::new(), 0usize, 0usize);
    for s in &inputs {
        let ids = e
            .tokenize(&[EmbedInput::Text(s.clone())])
            .unwrap()
            .remove(0);
        if tokens + ids.len() > budget && !pass.is_empty() {
            rows += e.forward(&pass).unwrap().len();
            passes += 1;
            pass.clear();
            tokens = 0;
        }
        tokens += ids.len();
        pass.push(ids);
    }
    if !pass.is_empty() {
        rows += e.forward(&pass).unwrap().len();
        passes += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(rows, inputs.len());
    println!(
        "{{\"engine\": \"maas-{}\", \"lines\": {}, \"seconds\": {secs:.2}, \"lines_per_s\": {:.1}, \"passes\": {passes}, \"max_batch_tokens\": {budget}}}",
        precision.as_str(),
        inputs.len(),
        inputs.len() as f64 / secs
    );
}
