#!/usr/bin/env python3
"""Whole-platform embeddings latency and throughput with the official openai
client, against sentence-transformers in its own process (2 threads), in
alternating rounds; prints medians as JSON lines.

Needs a running platform (scripts/dev-up) and its demo key:
    OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_API_KEY=$(cat .run/demo_key) \\
        python whole_platform.py MODELS_DIR [ROUNDS]
"""
import json
import os
import statistics
import subprocess
import sys
import time

import openai

models = sys.argv[1] if len(sys.argv) > 1 else "models"
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
# "word" is one word piece: 14 words + [CLS] + [SEP] = 16 tokens; 62 words = 64.
SHORT = " ".join(["word"] * 14)
LONG = [" ".join(["word"] * 62)] * 32
SINGLE_CALLS, BATCH_CALLS = 100, 10

ST_SCRIPT = r"""
import json, os, sys, time
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch
torch.set_num_threads(2)
from sentence_transformers import SentenceTransformer
m = SentenceTransformer(os.path.join(sys.argv[1], "all-minilm-l6-v2"), device="cpu")
short, long_, n1, n2 = json.loads(sys.argv[2])
m.encode([short]); m.encode(long_)
lat = []
for _ in range(n1):
    t = time.perf_counter(); m.encode([short], normalize_embeddings=True); lat.append(time.perf_counter() - t)
t = time.perf_counter()
for _ in range(n2):
    m.encode(long_, batch_size=32, normalize_embeddings=True)
thr = n2 * len(long_) / (time.perf_counter() - t)
lat.sort()
print(json.dumps({"p50_ms": lat[len(lat)//2]*1e3, "p99_ms": lat[int(len(lat)*0.99)-1]*1e3, "sentences_per_s": thr}))
"""


def platform_round(client):
    client.embeddings.create(model="all-minilm-l6-v2", input=[SHORT])
    lat = []
    for _ in range(SINGLE_CALLS):
        t = time.perf_counter()
        client.embeddings.create(model="all-minilm-l6-v2", input=[SHORT], encoding_format="float")
        lat.append(time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(BATCH_CALLS):
        client.embeddings.create(model="all-minilm-l6-v2", input=LONG, encoding_format="float")
    thr = BATCH_CALLS * len(LONG) / (time.perf_counter() - t)
    lat.sort()
    return {"p50_ms": lat[len(lat) // 2] * 1e3, "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1e3, "sentences_per_s": thr}


def st_round():
    args = json.dumps([SHORT, LONG, SINGLE_CALLS, BATCH_CALLS])
    out = subprocess.run([sys.executable, "-c", ST_SCRIPT, models, args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    client = openai.OpenAI()
    results = {"maas platform (openai client)": [], "sentence-transformers (2 threads, in process)": []}
    for _ in range(rounds):
        results["maas platform (openai client)"].append(platform_round(client))
        results["sentence-transformers (2 threads, in process)"].append(st_round())
    for name, runs in results.items():
        med = {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
        print(json.dumps({"engine": name, "rounds": len(runs), **med}))


if __name__ == "__main__":
    main()
