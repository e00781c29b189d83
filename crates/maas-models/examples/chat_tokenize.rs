//! Prints the ids of each line of stdin, as our SmolLM2 tokenizer sees them
//! (plain text, then with special tokens parsed).
//!     cargo run --release -p maas-models --example chat_tokenize -- models < lines.txt
#![allow(clippy::unwrap_used)]
use std::io::BufRead;
fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "models".into());
    let f = maas_gguf::GgufFile::open(
        &std::path::Path::new(&dir).join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"),
    )
    .unwrap();
    let t = maas_models::chat_tokenizer::ChatTokenizer::from_gguf(&f.gguf).unwrap();
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap().replace("\\n", "\n").replace("\\t", "\t");
        println!(
            "{:?}\n{:?}",
            t.encode(&line, false).unwrap(),
            t.encode(&line, true).unwrap()
        );
    }
}
