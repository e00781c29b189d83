//! SmolLM2-135M-Instruct's forward pass under teacher forcing against
//! llama.cpp (scripts/reference/smollm2_logits.py): the prompt plus
//! llama.cpp's own greedy continuation go in, and at every position where
//! llama.cpp's top two logits differ by at least 1.0, our top-1 must equal
//! its top-1 at ≥ 98 % of them. Near-ties are left out: llama.cpp's own
//! logits move by ~0.2 between its settings.

#![allow(clippy::unwrap_used)]

use maas_models::llama::Llama;
use serde_json::Value;
use std::path::PathBuf;

fn model() -> Llama {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let base = std::env::var("MAAS_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("models"));
    let p = base.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} is missing: run scripts/fetch-models", p.display());
    Llama::load(&p).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn argmax(row: &[f32]) -> u32 {
    row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i as u32).unwrap()
}

#[test]
fn teacher_forced_top1_matches_llama_cpp_where_it_is_decisive() {
    let m = model();
    let data: Value = serde_json::from_str(include_str!("data/smollm2_logits.json")).unwrap();
    let (mut decisive, mut agree, mut diff_sum, mut diff_n) = (0usize, 0usize, 0f64, 0usize);
    for case in data["cases"].as_array().unwrap() {
        let seq: Vec<u32> = ids(&case["prompt_ids"]).into_iter().chain(ids(&case["generated"])).collect();
        let mut cache = m.new_cache();
        let logits = m.forward(&seq, &mut cache, true);
        let vocab = m.cfg.vocab;
        for (p, top) in case["top5"].as_array().unwrap().iter().enumerate() {
            let top: Vec<(u32, f32)> = top.as_array().unwrap().iter().map(|e| (e[0].as_u64().unwrap() as u32, e[1].as_f64().unwrap() as f32)).collect();
            let row = &logits[p * vocab..(p + 1) * vocab];
            for &(id, want) in &top {
                diff_sum += f64::from((row[id as usize] - want).abs());
                diff_n += 1;
            }
            if top[0].1 - top[1].1 >= 1.0 {
                decisive += 1;
                agree += usize::from(argmax(row) == top[0].0);
            }
        }
    }
    let share = agree as f64 / decisive as f64;
    eprintln!("top-1 agreement {agree}/{decisive} = {:.1}% at decisive positions; mean |Δ| of top-5 logits {:.3}", share * 100.0, diff_sum / diff_n as f64);
    assert!(decisive >= 100, "enough decisive positions ({decisive})");
    assert!(share >= 0.98, "top-1 agreement {share}");
}

#[test]
fn decoding_token_by_token_with_the_cache_equals_one_pass() {
    let m = model();
    let seq: Vec<u32> = vec![1, 9690, 198, 19556, 28, 905, 17, 2, 198, 1, 520, 9531, 198];
    let mut full_cache = m.new_cache();
    let full = m.forward(&seq, &mut full_cache, true);
    let mut cache = m.new_cache();
    let mut step = m.forward(&seq[..5], &mut cache, true);
    for &tok in &seq[5..] {
        step.extend(m.forward(&[tok], &mut cache, false));
    }
    assert_eq!(cache.len(), seq.len());
    let worst = full.iter().zip(&step).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-3, "prefill and step-by-step logits differ by {worst}");
}
