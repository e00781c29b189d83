#!/usr/bin/env python3
"""Writes a second, float32 reference for SmolLM2-135M-Instruct: transformers
loads the same GGUF file (dequantising every weight to float32) and runs the
same sequences as the llama.cpp reference (its prompts plus llama.cpp's greedy
continuations, read from smollm2_logits.json), teacher-forced; for every
position it records the five highest next-token logits (id, value).
Output: crates/maas-models/tests/data/smollm2_logits_hf.json.

    .venv-ref/bin/pip install torch transformers gguf accelerate
    .venv-ref/bin/python scripts/reference/smollm2_transformers.py
"""
import json
import os

import torch
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIR = os.path.join(ROOT, "models", "smollm2-135m-instruct")
DATA = os.path.join(ROOT, "crates", "maas-models", "tests", "data")

torch.set_num_threads(2)
model = AutoModelForCausalLM.from_pretrained(DIR, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", torch_dtype=torch.float32)
model.eval()
ref = json.load(open(os.path.join(DATA, "smollm2_logits.json")))
cases = []
for case in ref["cases"]:
    seq = case["prompt_ids"] + case["generated"]
    with torch.no_grad():
        logits = model(torch.tensor([seq])).logits[0]
    # The positions llama.cpp's file covers: the last len(top5) of them.
    first = len(seq) - len(case["top5"])
    top5 = []
    for p in range(first, len(seq)):
        v, i = torch.topk(logits[p], 5)
        top5.append([[int(a), round(float(b), 4)] for a, b in zip(i, v)])
    cases.append({"prompt_ids": case["prompt_ids"], "generated": case["generated"], "top5": top5})
json.dump({"generator": f"transformers {__import__('transformers').__version__}, GGUF dequantised to float32", "cases": cases},
          open(os.path.join(DATA, "smollm2_logits_hf.json"), "w"))
print(f"wrote {sum(len(c['top5']) for c in cases)} positions")
