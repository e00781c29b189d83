#!/usr/bin/env python3
"""Writes reference embeddings of all-MiniLM-L6-v2 for the Rust tests.

Runs sentence-transformers (PyTorch) on the model files in models/ and writes
crates/maas-models/tests/data/minilm_reference.json: the inputs, their
word-piece ids (after truncation at 256) and their normalised embeddings.

Heavy (PyTorch); run it by hand, not in CI:
    python3 -m venv .venv-ref && .venv-ref/bin/pip install sentence-transformers torch
    HF_HUB_OFFLINE=1 .venv-ref/bin/python scripts/reference/minilm.py
"""
import json
import os
import sys

from sentence_transformers import SentenceTransformer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "models", "all-minilm-l6-v2")
OUT = os.path.join(ROOT, "crates", "maas-models", "tests", "data", "minilm_reference.json")

long_text = " ".join(f"sentence {i} talks about the weather, markets and the history of tea." for i in range(40))
INPUTS = [
    "",
    "a",
    "?",
    "Hello, world!",
    "hello world",
    "HELLO WORLD",
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\nmixed   in",
    "multiple     spaces     between     words",
    "Café naïve résumé façade jalapeño",
    "Ünïcödé çhäràctérs everywhere",
    "東京は日本の首都です。",
    "我喜欢学习机器学习和自然语言处理。",
    "Привет, как дела?",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "I love pizza 🍕🍕 and tacos 🌮!",
    "🎉🎉🎉",
    "emoji at the end 😀",
    "fn main() { println!(\"{}\", 1 + 2); }",
    "SELECT * FROM users WHERE id = 42;",
    "https://example.com/path?query=1&other=two#frag",
    "user@example.com wrote: 3.14159 is approximately pi",
    "1234567890 0987654321 42 3.5e-7",
    "MiXeD CaSe WoRdS ArE HaRd",
    "don't won't can't shouldn't",
    "state-of-the-art sentence-embeddings",
    "[CLS] [SEP] [MASK] [PAD] special token text",
    "The cat sat on the mat. " * 30,
    long_text,
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "supercalifragilisticexpialidocious",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
]


def main() -> int:
    model = SentenceTransformer(MODEL, device="cpu")
    assert model.max_seq_length == 256, model.max_seq_length
    tok = model.tokenizer
    ids = [tok(t, truncation=True, max_length=256)["input_ids"] for t in INPUTS]
    emb = model.encode(INPUTS, batch_size=8, normalize_embeddings=True, convert_to_numpy=True)
    data = {
        "model": "all-minilm-l6-v2",
        "generator": "sentence-transformers " + __import__("sentence_transformers").__version__,
        "cases": [
            {"input": t, "ids": i, "embedding": [round(float(v), 7) for v in e]}
            for t, i, e in zip(INPUTS, ids, emb)
        ],
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, separators=(",", ":"))
    print(f"wrote {len(INPUTS)} cases to {OUT}; longest has {max(map(len, ids))} word pieces")
    return 0


if __name__ == "__main__":
    sys.exit(main())
