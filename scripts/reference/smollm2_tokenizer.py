#!/usr/bin/env python3
"""Writes llama.cpp's token ids for a set of tricky strings, for the Rust
tokenizer test: crates/maas-models/tests/data/smollm2_tokens.json.

Each case has the ids with special-token text left as text (`special=False`,
how chat message text must be encoded) and parsed (`special=True`, how raw
completion prompts are), both without BOS, as llama.cpp tokenizes.

    .venv-ref/bin/pip install llama-cpp-python
    .venv-ref/bin/python scripts/reference/smollm2_tokenizer.py
"""
import json
import os

from llama_cpp import Llama

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "models", "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join(ROOT, "crates", "maas-models", "tests", "data", "smollm2_tokens.json")

CASES = [
    "", " ", "  ", "\n", "\n\n\n", "\t", " \t\n ",
    "Hello, world!", "hello world", "HELLO WORLD", "Hello   world", "  leading spaces", "trailing spaces   ",
    "1", "12", "123", "1234567890", "3.14159", "-42", "1,000,000", "2024-01-01T12:34:56Z", "v1.2.3",
    "don't won't can't I'm you're we've they'll she'd",
    "Café naïve résumé façade jalapeño", "Ünïcödé",
    "日本語のテキスト", "我喜欢学习机器学习和自然语言处理。", "한국어 텍스트", "Привет, как дела?", "مرحبا بالعالم", "שלום", "नमस्ते",
    "😀", "🎉🎉🎉", "I love pizza 🍕 and tacos 🌮!", "👨‍👩‍👧‍👦 family", "a\u200bb zero-width",
    "def f(x):\n    return x ** 2  # square\n", "fn main() { println!(\"{}\", 1 + 2); }", "SELECT * FROM t WHERE a = 'b';",
    "<html><body><p>text</p></body></html>", "https://example.com/path?q=1&r=two#frag", "user@example.com",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|>", "text<|im_end|>more",
    "<|im_start", "im_start|>", "<s></s>[INST]",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
]


def main():
    llm = Llama(model_path=MODEL, vocab_only=True, verbose=False)
    cases = []
    for text in CASES:
        b = text.encode("utf-8")
        cases.append({
            "text": text,
            "plain": llm.tokenize(b, add_bos=False, special=False),
            "special": llm.tokenize(b, add_bos=False, special=True),
        })
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump({"generator": "llama-cpp-python (llama.cpp tokenizer)", "cases": cases}, f, ensure_ascii=False, indent=0)
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
