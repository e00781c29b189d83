//! The continuous-batching engine on the real SmolLM2: sequences that run
//! together produce what each produces alone, join and leave between steps,
//! wait for KV room, and leave the batch when cancelled.

#![allow(clippy::unwrap_used)]

use maas_models::chat::{ChatError, ChatModel, FinishReason, Generation};
use maas_models::engine::{Engine, EngineConfig, Event, Request};
use maas_models::sampling::SamplingParams;
use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;

fn model() -> ChatModel {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let base = std::env::var("MAAS_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("models"));
    ChatModel::load(&base.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap()
}

type Outcome = Rc<RefCell<Option<Result<Generation, ChatError>>>>;

fn request<'a>(
    prompt: Vec<u32>,
    max_tokens: usize,
    seed: u64,
    out: &Outcome,
    streamed: &Rc<RefCell<String>>,
    cancel: Rc<Cell<bool>>,
) -> Request<'a> {
    let (out, streamed) = (out.clone(), streamed.clone());
    Request {
        prompt,
        params: SamplingParams {
            temperature: 0.8,
            seed: Some(seed),
            max_tokens,
            ..Default::default()
        },
        logprobs: Some(2),
        cancelled: Box::new(move || cancel.get()),
        on_event: Box::new(move |e| match e {
            Event::Text { text, .. } => streamed.borrow_mut().push_str(&text),
            Event::Done(r) => *out.borrow_mut() = Some(r),
        }),
    }
}

fn prompts(m: &ChatModel) -> Vec<Vec<u32>> {
    [
        "Write a haiku about the sea.",
        "What is 12 times 7?",
        "List three colours.",
        "Say hello in French.",
    ]
    .iter()
    .map(|q| {
        m.chat_prompt(&[maas_models::chat_template::Message {
            role: "user".into(),
            content: (*q).into(),
        }])
        .unwrap()
    })
    .collect()
}

#[test]
fn batched_sequences_generate_what_each_generates_alone() {
    let m = model();
    let ps = prompts(&m);
    // Each row's arithmetic depends only on the row and its role (prompt or
    // generated): batched and alone agree exactly, sampling included, even
    // with prompts cut into different chunks.
    let cfg = EngineConfig {
        max_seqs: 4,
        kv_budget_tokens: 4096,
        step_tokens: 16,
    };
    // Alone, one at a time.
    let mut alone = Vec::new();
    for (i, p) in ps.iter().enumerate() {
        let (out, streamed) = (Outcome::default(), Rc::new(RefCell::new(String::new())));
        let mut e = Engine::new(&m, EngineConfig::default());
        e.submit(request(
            p.clone(),
            24,
            i as u64,
            &out,
            &streamed,
            Rc::default(),
        ));
        while e.step() {}
        let g = out.borrow_mut().take().unwrap().unwrap();
        assert_eq!(
            *streamed.borrow(),
            g.text,
            "streamed text adds up to the result"
        );
        alone.push(g);
    }
    // Together, with a small step budget so prompts prefill in chunks
    // alongside the others' decoding, and staggered arrivals.
    let mut e = Engine::new(&m, cfg);
    let outs: Vec<Outcome> = ps.iter().map(|_| Outcome::default()).collect();
    let streams: Vec<_> = ps
        .iter()
        .map(|_| Rc::new(RefCell::new(String::new())))
        .collect();
    let mut steps = 0;
    for (i, p) in ps.iter().enumerate() {
        e.submit(request(
            p.clone(),
            24,
            i as u64,
            &outs[i],
            &streams[i],
            Rc::default(),
        ));
        for _ in 0..3 {
            e.step();
            steps += 1;
        }
    }
    while e.step() {
        steps += 1;
    }
    assert!(e.is_idle());
    for (i, (a, out)) in alone.iter().zip(&outs).enumerate() {
        let b = out.borrow_mut().take().unwrap().unwrap();
        assert_eq!(b.completion_tokens, a.completion_tokens, "sequence {i}");
        assert_eq!(b.text, a.text, "sequence {i}");
        assert_eq!(
            b.logprobs.len(),
            b.completion_tokens,
            "one logprob per token"
        );
        assert!(b
            .logprobs
            .iter()
            .all(|l| l.top.len() == 2 && l.logprob <= 0.0 && l.top[0].1 >= l.top[1].1));
    }
    // Four 24-token generations in fewer steps than one after another.
    assert!(
        steps < alone.iter().map(|g| g.completion_tokens).sum::<usize>(),
        "{steps} steps"
    );
}

#[test]
fn requests_wait_for_kv_room_and_impossible_ones_are_refused() {
    let m = model();
    let ps = prompts(&m);
    let budget = ps[0].len() + 8 + ps[1].len() + 8; // room for two at a time
    let mut e = Engine::new(
        &m,
        EngineConfig {
            max_seqs: 8,
            kv_budget_tokens: budget,
            step_tokens: 64,
        },
    );
    let outs: Vec<Outcome> = (0..3).map(|_| Outcome::default()).collect();
    let s = Rc::new(RefCell::new(String::new()));
    for i in 0..3 {
        e.submit(request(ps[i].clone(), 8, 1, &outs[i], &s, Rc::default()));
    }
    e.step();
    let load = e.load();
    assert_eq!(
        (load.running, load.waiting),
        (2, 1),
        "the third waits for room"
    );
    assert!(load.kv_reserved_tokens <= budget);
    while e.step() {}
    for o in &outs {
        assert!(o.borrow().as_ref().unwrap().is_ok());
    }
    // Larger than the whole budget: refused at once, never queued.
    let big = Outcome::default();
    e.submit(request(ps[0].clone(), budget, 1, &big, &s, Rc::default()));
    assert!(matches!(
        big.borrow().as_ref().unwrap(),
        Err(ChatError::OverBudget { .. })
    ));
    assert!(e.is_idle());
    // An id outside the vocabulary: refused.
    let bad = Outcome::default();
    e.submit(request(vec![1, 999_999], 4, 1, &bad, &s, Rc::default()));
    assert!(matches!(
        bad.borrow().as_ref().unwrap(),
        Err(ChatError::BadToken { .. })
    ));
}

#[test]
fn a_cancelled_sequence_leaves_within_one_step_and_the_others_go_on() {
    let m = model();
    let ps = prompts(&m);
    let mut e = Engine::new(&m, EngineConfig::default());
    let (a, b) = (Outcome::default(), Outcome::default());
    let s = Rc::new(RefCell::new(String::new()));
    let flag = Rc::new(Cell::new(false));
    e.submit(request(ps[0].clone(), 200, 1, &a, &s, flag.clone()));
    e.submit(request(ps[1].clone(), 16, 2, &b, &s, Rc::default()));
    for _ in 0..4 {
        e.step();
    }
    flag.set(true);
    e.step();
    assert!(
        matches!(a.borrow().as_ref().unwrap(), Err(ChatError::Cancelled)),
        "gone after one step"
    );
    assert_eq!(e.load().running, 1);
    while e.step() {}
    let g = b.borrow_mut().take().unwrap().unwrap();
    assert!(
        g.completion_tokens > 0
            && matches!(g.finish_reason, FinishReason::Stop | FinishReason::Length)
    );
}
