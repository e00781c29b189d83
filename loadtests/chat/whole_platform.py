#!/usr/bin/env python3
"""Chat through the whole platform (api → RabbitMQ → scheduler → worker →
streamed back), with the official openai client: N concurrent streaming chat
completions, each its own thread. Reports aggregate decode tokens/s (all
completion tokens over the wall time), per-stream tokens/s after the first
token, and time to first token p50/p95. Prints one JSON line per case.

Needs a running platform (scripts/dev-up) and its demo key:
    OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_API_KEY=$(cat .run/demo_key) \\
        python loadtests/chat/whole_platform.py [streams,…] [max_tokens]
"""
import json
import statistics
import sys
import threading
import time

import openai

streams = [int(x) for x in (sys.argv[1] if len(sys.argv) > 1 else "1,4,16").split(",")]
max_tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 128
TOPICS = ["the sea", "a city at night", "mountains", "a library", "the moon", "autumn", "a train journey", "a garden",
          "the desert", "a storm", "a market", "winter", "a river", "the stars", "an old house", "a forest"]
client = openai.OpenAI(max_retries=0, timeout=600)


def one(i, out):
    t0 = time.perf_counter()
    first = None
    tokens = 0
    stream = client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[{"role": "user", "content": f"Write a long, detailed story about {TOPICS[i % len(TOPICS)]}."}],
        max_tokens=max_tokens, temperature=0.8, seed=i, stream=True, stream_options={"include_usage": True},
    )
    for c in stream:
        if c.choices and c.choices[0].delta.content and first is None:
            first = time.perf_counter()
        if c.usage:
            tokens = c.usage.completion_tokens
    end = time.perf_counter()
    out[i] = (first - t0 if first else None, tokens, end - (first or t0), t0, end)


# Warm-up: one short request.
client.chat.completions.create(model="smollm2-135m-instruct", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
for n in streams:
    if n == 1:
        # One stream: four requests one after another, for a steadier median.
        out = [None] * 4
        for i in range(4):
            one(i, out)
    else:
        out = [None] * n
        threads = [threading.Thread(target=one, args=(i, out)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    ttft = sorted(o[0] for o in out if o[0] is not None)
    wall = sum(o[4] - o[3] for o in out) if n == 1 else max(o[4] for o in out) - min(o[3] for o in out)
    total = sum(o[1] for o in out)
    # Decode rate after the first token: the tokens after it over the time after it.
    per_stream = [(o[1] - 1) / o[2] for o in out if o[2] > 0 and o[1] > 1]
    print(json.dumps({
        "engine": "maas-platform", "case": "stream", "streams": n, "max_tokens": max_tokens,
        "completion_tokens": total, "aggregate_tokens_per_s": round(total / wall, 1),
        "per_stream_tokens_per_s_p50": round(statistics.median(per_stream), 1) if per_stream else None,
        "ttft_p50_ms": round(1e3 * ttft[len(ttft) // 2], 1),
        "ttft_p95_ms": round(1e3 * ttft[min(len(ttft) - 1, int(0.95 * len(ttft)))], 1),
    }), flush=True)
