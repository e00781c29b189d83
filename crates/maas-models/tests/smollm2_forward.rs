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
    let base = std::env::var("MAAS_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("models"));
    let p = base.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-models",
        p.display()
    );
    Llama::load(&p).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn argmax(row: &[f32]) -> u32 {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i as u32)
        .unwrap()
}

/// Compares logits rows (one per reference position) with llama.cpp's top-5:
/// (decisive positions, agreeing ones, sum of |Δ| over top-5, count).
fn score(case: &Value, rows: &[f32], vocab: usize, acc: &mut (usize, usize, f64, usize)) {
    for (p, top) in case["top5"].as_array().unwrap().iter().enumerate() {
        let top: Vec<(u32, f32)> = top
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e[0].as_u64().unwrap() as u32, e[1].as_f64().unwrap() as f32))
            .collect();
        let row = &rows[p * vocab..(p + 1) * vocab];
        for &(id, want) in &top {
            acc.2 += f64::from((row[id as usize] - want).abs());
            acc.3 += 1;
        }
        if top[0].1 - top[1].1 >= 1.0 {
            acc.0 += 1;
            acc.1 += usize::from(argmax(row) == top[0].0);
        }
    }
}

fn report(what: &str, (decisive, agree, diff_sum, diff_n): (usize, usize, f64, usize)) {
    let share = agree as f64 / decisive as f64;
    eprintln!("{what}: top-1 agreement {agree}/{decisive} = {:.1}% at decisive positions; mean |Δ| of top-5 logits {:.3}", share * 100.0, diff_sum / diff_n as f64);
    assert!(
        decisive >= 100,
        "{what}: enough decisive positions ({decisive})"
    );
    assert!(share >= 0.98, "{what}: top-1 agreement {share}");
}

fn cases() -> Vec<Value> {
    let data: Value = serde_json::from_str(include_str!("data/smollm2_logits.json")).unwrap();
    data["cases"].as_array().unwrap().clone()
}

/// The float32 reference: transformers running the same GGUF dequantised
/// (scripts/reference/smollm2_transformers.py), on the same sequences.
fn float32_cases() -> Vec<Value> {
    let data: Value = serde_json::from_str(include_str!("data/smollm2_logits_hf.json")).unwrap();
    data["cases"].as_array().unwrap().clone()
}

#[test]
fn both_paths_match_the_float32_transformers_reference_where_it_is_decisive() {
    let m = model();
    let (mut prefill, mut decode) = ((0, 0, 0.0, 0), (0, 0, 0.0, 0));
    for case in float32_cases() {
        let seq: Vec<u32> = ids(&case["prompt_ids"])
            .into_iter()
            .chain(ids(&case["generated"]))
            .collect();
        let logits = m.forward(&seq, &mut m.new_cache(), true);
        score(&case, &logits, m.cfg.vocab, &mut prefill);
        let mut cache = m.new_cache();
        let mut steps = Vec::new();
        for &tok in &seq {
            steps.extend(m.forward(&[tok], &mut cache, false));
        }
        score(&case, &steps, m.cfg.vocab, &mut decode);
    }
    report("prefill vs transformers float32", prefill);
    report("decode vs transformers float32", decode);
}

/// Prefill path: the whole sequence in one pass (dequantised tiles and GEMM).
#[test]
fn teacher_forced_top1_matches_llama_cpp_where_it_is_decisive() {
    let m = model();
    let mut acc = (0, 0, 0.0, 0);
    for case in cases() {
        let seq: Vec<u32> = ids(&case["prompt_ids"])
            .into_iter()
            .chain(ids(&case["generated"]))
            .collect();
        let mut cache = m.new_cache();
        let logits = m.forward(&seq, &mut cache, true);
        score(&case, &logits, m.cfg.vocab, &mut acc);
    }
    report("prefill", acc);
}

/// Decode path: the prompt's tokens one step at a time, as generation runs
/// them (8-bit activations and the integer dot-product kernels).
#[test]
fn teacher_forced_decode_steps_match_llama_cpp_where_it_is_decisive() {
    let m = model();
    let mut acc = (0, 0, 0.0, 0);
    for case in cases() {
        let seq: Vec<u32> = ids(&case["prompt_ids"])
            .into_iter()
            .chain(ids(&case["generated"]))
            .collect();
        let mut cache = m.new_cache();
        let mut logits = Vec::new();
        for &tok in &seq {
            logits.extend(m.forward(&[tok], &mut cache, false));
        }
        score(&case, &logits, m.cfg.vocab, &mut acc);
    }
    report("decode", acc);
}

#[test]
fn decoding_with_the_cache_follows_one_pass() {
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
    let vocab = m.cfg.vocab;
    for (p, (a, b)) in full.chunks(vocab).zip(step.chunks(vocab)).enumerate() {
        let scale = a.iter().fold(0f32, |x, v| x.max(v.abs()));
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        // Decode steps quantise activations to 8 bits, as llama.cpp does.
        assert!(
            worst < 0.05 * scale,
            "position {p}: one pass and step-by-step logits differ by {worst} (scale {scale})"
        );
    }
}

/// Sequences batched together get exactly the logits each gets alone: each
/// row's path is fixed by its role (prompt or generated), not by the batch.
#[test]
fn a_mixed_batch_equals_each_sequence_alone() {
    use maas_models::llama::{Logits, Step};
    let m = model();
    let prompts: Vec<Vec<u32>> = vec![
        vec![1, 9690, 198, 19556, 28],
        vec![
            1, 520, 9531, 198, 2, 17, 905, 1, 9690, 198, 19556, 28, 905, 17, 2, 198, 1, 520, 9531,
        ],
        vec![42],
    ];
    let run = |caches: &mut [&mut maas_models::llama::KvCache],
               toks: &[&[u32]],
               prompt: bool|
     -> Vec<Vec<f32>> {
        let mut batch: Vec<Step<'_>> = caches
            .iter_mut()
            .zip(toks)
            .map(|(cache, t)| Step {
                tokens: t,
                cache,
                logits: Logits::Last,
                prompt,
            })
            .collect();
        m.step(&mut batch)
    };
    let tok: &[u32] = &[7];
    // Alone: prefill, then one decode step, one sequence at a time.
    let mut alone = Vec::new();
    for p in &prompts {
        let mut c = m.new_cache();
        let a = run(&mut [&mut c], &[p], true).remove(0);
        let b = run(&mut [&mut c], &[tok], false).remove(0);
        alone.push((a, b));
    }
    // Together: one prefill step for all three, then one decode step; then
    // a step that mixes a decode row with a new prompt.
    let mut cs: Vec<_> = prompts.iter().map(|_| m.new_cache()).collect();
    let (c0, rest) = cs.split_at_mut(1);
    let (c1, c2) = rest.split_at_mut(1);
    let firsts = run(
        &mut [&mut c0[0], &mut c1[0], &mut c2[0]],
        &[&prompts[0], &prompts[1], &prompts[2]],
        true,
    );
    let seconds = run(
        &mut [&mut c0[0], &mut c1[0], &mut c2[0]],
        &[tok, tok, tok],
        false,
    );
    for (i, ((a, b), (fa, fb))) in alone.iter().zip(firsts.iter().zip(&seconds)).enumerate() {
        assert!(a == fa, "sequence {i}: prefill logits differ in a batch");
        assert!(b == fb, "sequence {i}: decode logits differ in a batch");
    }
    let mut fresh = m.new_cache();
    let mut mixed = {
        let mut batch = vec![
            Step {
                tokens: tok,
                cache: &mut c0[0],
                logits: Logits::Last,
                prompt: false,
            },
            Step {
                tokens: &prompts[1],
                cache: &mut fresh,
                logits: Logits::Last,
                prompt: true,
            },
        ];
        m.step(&mut batch)
    };
    assert!(
        mixed.remove(1) == alone[1].0,
        "a prompt batched with a decode row"
    );
}
