#!/usr/bin/env python3
"""Medians of chat_bench / llama_cpp_engine / whole_platform JSON lines as
markdown tables."""
import json
import statistics
import sys
from collections import defaultdict

engine = defaultdict(list)  # (case, size, engine) -> tokens/s
serving = defaultdict(list)  # (kind, streams) -> dicts
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"):
        continue
    d = json.loads(line)
    if d.get("case") in ("prefill", "decode"):
        size = d.get("prompt", d.get("sequences"))
        engine[(d["case"], size, d["engine"])].append(d["tokens_per_s"])
    elif d.get("engine") == "llama.cpp-in-process":
        serving[("llama", 1)].append(d)
    elif d.get("case") in ("engine", "stream"):
        serving[(d["case"], d["streams"])].append(d)

med = lambda xs: statistics.median(xs)  # noqa: E731
print("| case | maas tokens/s | llama.cpp tokens/s | maas / llama.cpp |")
print("|---|---|---|---|")
for case, size in sorted({(k[0], k[1]) for k in engine}, key=lambda k: (k[0] != "prefill", k[1])):
    a, b = engine.get((case, size, "maas")), engine.get((case, size, "llama.cpp"))
    label = f"prefill, {size}-token prompt" if case == "prefill" else f"decode, {size} sequence{'s' if size > 1 else ''}"
    ratio = f"{med(a) / med(b):.2f}×" if a and b else "–"
    print(f"| {label} | {med(a):.1f} | {med(b):.1f} | {ratio} |" if a and b else f"| {label} | {med(a) if a else '–'} | {med(b) if b else '–'} | – |")

if serving:
    print()
    print("| streams | engine alone tokens/s | platform tokens/s | platform / engine | engine TTFT p50 / p95 ms | platform TTFT p50 / p95 ms |")
    print("|---|---|---|---|---|---|")
    for n in sorted({k[1] for k in serving if k[0] != "llama"}):
        e, p = serving.get(("engine", n), []), serving.get(("stream", n), [])
        et = med([x["aggregate_tokens_per_s"] for x in e]) if e else None
        pt = med([x["aggregate_tokens_per_s"] for x in p]) if p else None
        ttft = lambda xs: f"{med([x['ttft_p50_ms'] for x in xs]):.0f} / {med([x['ttft_p95_ms'] for x in xs]):.0f}" if xs else "–"  # noqa: E731
        ratio = f"{pt / et:.2f}×" if et and pt else "–"
        print(f"| {n} | {et if et is not None else '–'} | {pt if pt is not None else '–'} | {ratio} | {ttft(e)} | {ttft(p)} |")

llama = serving.get(("llama", 1), [])
ours = [x for x in serving.get(("stream", 1), []) if x.get("per_stream_tokens_per_s_p50")]
if llama and ours:
    a = med([x["per_stream_tokens_per_s_p50"] for x in ours])
    b = med([x["per_stream_tokens_per_s_p50"] for x in llama])
    print()
    print("| single stream, decode tokens/s after the first token | maas platform (openai client) | llama-cpp-python in process | ratio |")
    print("|---|---|---|---|")
    print(f"| streamed chat, 128 tokens | {a:.1f} | {b:.1f} | {a / b:.2f}× |")
    print(f"| time to first token p50 | {med([x['ttft_p50_ms'] for x in ours]):.0f} ms | {med([x['ttft_p50_ms'] for x in llama]):.0f} ms | |")
