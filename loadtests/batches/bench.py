"""Batch API benchmark driver (standard library only).

  bench.py make N            > lines.jsonl    N embeddings lines, deterministic
  bench.py run lines.jsonl engine.json        against a running platform

`run` needs API (base URL), KEY_A (the batch tenant's key) and KEY_B
(another tenant's key). It measures, in order: tenant B's single embeddings
calls with the platform idle; tenant A's upload and create (lines stored per
second at create); the batch running alone to its last line (lines per
second, against the engine alone on the same file, from engine.json); then a
second run of the same file while tenant B calls again (its p95 during the
batch against idle); that batch is cancelled once B's calls are done.
Prints markdown.
"""
import json
import os
import random
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

MODEL = "all-minilm-l6-v2"
WORDS = ("the a river train small city light winter market quiet north old station morning "
         "garden bridge road song paper window coffee cloud stone harbour field evening "
         "letter music table forest street summer").split()


def make(n):
    rng = random.Random(7)
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 16)))
        print(json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/embeddings",
                          "body": {"model": MODEL, "input": text}}))


API = os.environ.get("API", "")


def call(method, path, key, body=None, headers=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    h = {"authorization": f"Bearer {key}"}
    if body is not None:
        h["content-type"] = "application/json"
    h.update(headers or {})
    req = urllib.request.Request(API + path, data=data, method=method, headers=h)
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def upload(key, path):
    boundary = uuid.uuid4().hex
    with open(path, "rb") as f:
        content = f.read()
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"lines.jsonl\"\r\n"
            "Content-Type: application/jsonl\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return call("POST", "/v1/files", key, raw=body,
                headers={"content-type": f"multipart/form-data; boundary={boundary}"})


def probe(key, n, stop=None):
    """Sequential single embeddings calls; latencies in ms."""
    out = []
    for i in range(n):
        if stop is not None and stop.is_set():
            break
        t = time.perf_counter()
        call("POST", "/v1/embeddings", key, {"model": MODEL, "input": f"is it going to rain in the hills today {i}"})
        out.append((time.perf_counter() - t) * 1e3)
    return out


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def wait_lines(key, bid, total):
    """Polls until every line has ended: (seconds to first line, seconds to last line, status)."""
    t0 = time.perf_counter()
    first = None
    while True:
        b = call("GET", f"/v1/batches/{bid}", key)
        rc = b["request_counts"]
        done = rc["completed"] + rc["failed"]
        if done and first is None:
            first = time.perf_counter() - t0
        if done >= total or b["status"] in ("completed", "failed", "expired", "cancelled"):
            return first, time.perf_counter() - t0, b
        time.sleep(0.2)


def run(path, engine_path):
    key_a, key_b = os.environ["KEY_A"], os.environ["KEY_B"]
    engine = json.load(open(engine_path))
    total = sum(1 for l in open(path) if l.strip())
    probe(key_b, 30)  # warm-up
    idle = probe(key_b, 300)

    t = time.perf_counter()
    f = upload(key_a, path)
    t_upload = time.perf_counter() - t
    t = time.perf_counter()
    b = call("POST", "/v1/batches", key_a, {"input_file_id": f["id"], "endpoint": "/v1/embeddings",
                                             "completion_window": "24h", "metadata": {"run": "alone"}})
    t_create = time.perf_counter() - t
    first, last, _ = wait_lines(key_a, b["id"], total)
    t = time.perf_counter()
    while call("GET", f"/v1/batches/{b['id']}", key_a)["status"] != "completed":
        time.sleep(0.2)
    t_final = time.perf_counter() - t
    done = call("GET", f"/v1/batches/{b['id']}", key_a)
    assert done["request_counts"]["completed"] == total, done["request_counts"]

    # The same lines again, while tenant B calls.
    b2 = call("POST", "/v1/batches", key_a, {"input_file_id": f["id"], "endpoint": "/v1/embeddings",
                                              "completion_window": "24h", "metadata": {"run": "shared"}})
    while call("GET", f"/v1/batches/{b2['id']}", key_a)["request_counts"]["completed"] < 200:
        time.sleep(0.1)
    during = probe(key_b, 300)
    mid = call("GET", f"/v1/batches/{b2['id']}", key_a)
    still_running = mid["request_counts"]["completed"] < total
    try:
        call("POST", f"/v1/batches/{b2['id']}/cancel", key_a, {})
    except urllib.error.HTTPError as e:
        if e.code != 409:  # 409: it had ended already
            raise

    plat_rate = total / last
    print(f"### {total:,}-line embeddings batch ({MODEL}, one worker, every service on these cores)\n")
    print("| measure | value |")
    print("|---|---|")
    print(f"| upload ({os.path.getsize(path) / 1e6:.1f} MB) | {t_upload:.2f} s |")
    print(f"| create (validation and storing every line) | {t_create:.2f} s: **{total / t_create:,.0f} lines/s stored** |")
    print(f"| create → first line ended | {first:.2f} s |")
    print(f"| create → last line ended | {last:.1f} s: **{plat_rate:,.0f} lines/s** |")
    print(f"| last line → batch `completed` (output file written) | {t_final:.1f} s |")
    print(f"| engine alone, same file ({engine['engine']}, passes of ≤ {engine['max_batch_tokens']} word pieces) | "
          f"{engine['seconds']:.1f} s: **{engine['lines_per_s']:,.0f} lines/s** |")
    print(f"| platform's cost over the engine | **{(engine['lines_per_s'] / plat_rate - 1) * 100:+.1f} %** (goal ≤ 10 %) |")
    print()
    print("Another tenant's single embeddings call (sequential, 300 calls):\n")
    print("| | p50 | p95 | p99 |")
    print("|---|---|---|---|")
    print(f"| idle | {pct(idle, 50):.1f} ms | {pct(idle, 95):.1f} ms | {pct(idle, 99):.1f} ms |")
    print(f"| during the batch{'' if still_running else ' (it ended before the calls did)'} | {pct(during, 50):.1f} ms | {pct(during, 95):.1f} ms | {pct(during, 99):.1f} ms |")
    print(f"| ratio p95 | | **{pct(during, 95) / pct(idle, 95):.2f}×** (goal ≤ 1.5×) | |")


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(int(sys.argv[2]))
    else:
        run(sys.argv[2], sys.argv[3])
