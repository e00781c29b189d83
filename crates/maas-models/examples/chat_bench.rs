//! Engine-alone speed of SmolLM2-135M-Instruct on our CPU kernels.
//!
//!     cargo run --release -p maas-models --example chat_bench -- [models_dir] [decode_tokens] [sequences,…]
//!
//! Prints one JSON object per case:
//! - `prefill` of a 128- and a 512-token prompt (tokens/s, best of 3);
//! - `decode` with 1, 4 and 16 sequences stepping together after a 128-token
//!   prompt each (aggregate tokens/s over `decode_tokens` steps);
//! - `engine`: the continuous-batching engine serving 1, 4 and 16 chat
//!   requests submitted together (the same prompts, max_tokens and sampling
//!   as loadtests/chat/whole_platform.py): aggregate tokens/s and time to
//!   first token, the engine-alone figure the platform is compared with.

#![allow(clippy::unwrap_used)]

use maas_models::chat::ChatModel;
use maas_models::chat_template::Message;
use maas_models::engine::{Engine, EngineConfig, Event, Request};
use maas_models::llama::{Llama, Logits, Step};
use maas_models::sampling::SamplingParams;
use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

fn prompt(len: usize, salt: u32) -> Vec<u32> {
    // Ordinary vocabulary ids (not special tokens), varied per sequence.
    (0..len as u32)
        .map(|i| 1000 + (i * 37 + salt * 101) % 30_000)
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = args
        .get(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("models"));
    let steps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    // Which decode cases (sequences stepping together); prefill runs unless
    // a list is given.
    let only: Option<Vec<usize>> = args
        .get(3)
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect());
    let gguf = dir.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let m = Llama::load(&gguf).unwrap();
    println!(
        "{{\"engine\": \"maas\", \"weights_mb\": {:.1}, \"threads\": {}, \"kernel\": \"{:?}\"}}",
        m.weight_bytes() as f64 / 1e6,
        rayon::current_num_threads(),
        maas_kernels::cpu::q_kernel()
    );
    // Warm-up.
    m.forward(&prompt(32, 0), &mut m.new_cache(), false);
    for len in if only.is_some() {
        vec![]
    } else {
        vec![128usize, 512]
    } {
        let p = prompt(len, 1);
        let mut best = f64::MAX;
        for _ in 0..3 {
            let mut c = m.cache_for(len);
            let t0 = Instant::now();
            std::hint::black_box(m.forward(&p, &mut c, false));
            best = best.min(t0.elapsed().as_secs_f64());
        }
        println!("{{\"engine\": \"maas\", \"case\": \"prefill\", \"prompt\": {len}, \"tokens_per_s\": {:.1}}}", len as f64 / best);
    }
    for seqs in only.clone().unwrap_or_else(|| vec![1usize, 4, 16]) {
        let mut caches: Vec<_> = (0..seqs).map(|_| m.cache_for(128 + steps)).collect();
        let prompts: Vec<Vec<u32>> = (0..seqs).map(|s| prompt(128, s as u32 + 2)).collect();
        for (c, p) in caches.iter_mut().zip(&prompts) {
            m.forward(p, c, false);
        }
        let mut next: Vec<u32> = vec![1000; seqs];
        let t0 = Instant::now();
        for _ in 0..steps {
            let toks: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
            let mut batch: Vec<Step<'_>> = caches
                .iter_mut()
                .zip(&toks)
                .map(|(cache, t)| Step {
                    tokens: t,
                    cache,
                    logits: Logits::Last,
                    prompt: false,
                })
                .collect();
            let out = m.step(&mut batch);
            next = out
                .iter()
                .map(|l| {
                    l.iter()
                        .enumerate()
                        .max_by(|a, b| a.1.total_cmp(b.1))
                        .unwrap()
                        .0 as u32
                })
                .collect();
        }
        let s = t0.elapsed().as_secs_f64();
        println!(
            "{{\"engine\": \"maas\", \"case\": \"decode\", \"sequences\": {seqs}, \"tokens_per_s\": {:.1}, \"step_ms\": {:.2}}}",
            (seqs * steps) as f64 / s,
            s * 1e3 / steps as f64
        );
    }
    drop(m);
    let chat = ChatModel::load(&gguf).unwrap();
    const TOPICS: [&str; 16] = [
        "the sea",
        "a city at night",
        "mountains",
        "a library",
        "the moon",
        "autumn",
        "a train journey",
        "a garden",
        "the desert",
        "a storm",
        "a market",
        "winter",
        "a river",
        "the stars",
        "an old house",
        "a forest",
    ];
    for seqs in only.unwrap_or_else(|| vec![1usize, 4, 16]) {
        let mut engine = Engine::new(&chat, EngineConfig::default());
        let t0 = Instant::now();
        let firsts: Rc<RefCell<Vec<f64>>> = Rc::default();
        let tokens: Rc<RefCell<usize>> = Rc::default();
        for i in 0..seqs {
            let msg = Message {
                role: "user".into(),
                content: format!("Write a long, detailed story about {}.", TOPICS[i % 16]),
            };
            let prompt = chat.chat_prompt(&[msg]).unwrap();
            let (f, tk) = (firsts.clone(), tokens.clone());
            let mut seen = false;
            engine.submit(Request {
                prompt,
                params: SamplingParams {
                    temperature: 0.8,
                    seed: Some(i as u64),
                    max_tokens: 128,
                    ..Default::default()
                },
                logprobs: None,
                cancelled: Box::new(|| false),
                on_event: Box::new(move |e| match e {
                    Event::Text { .. } if !seen => {
                        seen = true;
                        f.borrow_mut().push(t0.elapsed().as_secs_f64());
                    }
                    Event::Done(Ok(g)) => *tk.borrow_mut() += g.completion_tokens,
                    _ => {}
                }),
            });
        }
        while engine.step() {}
        let wall = t0.elapsed().as_secs_f64();
        let mut f = firsts.borrow().clone();
        f.sort_by(f64::total_cmp);
        let total = *tokens.borrow();
        println!(
            "{{\"engine\": \"maas\", \"case\": \"engine\", \"streams\": {seqs}, \"completion_tokens\": {total}, \"aggregate_tokens_per_s\": {:.1}, \"ttft_p50_ms\": {:.1}, \"ttft_p95_ms\": {:.1}}}",
            total as f64 / wall,
            1e3 * f[f.len() / 2],
            1e3 * f[((f.len() as f64 * 0.95) as usize).min(f.len() - 1)]
        );
    }
}
