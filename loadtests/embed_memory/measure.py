#!/usr/bin/env python3
"""Sends the largest embeddings request the API admits (2,048 inputs of 254
characters, each 256 word pieces with [CLS] and [SEP]) from one tenant, and
meanwhile one-input calls from another tenant, while sampling the worker's
VmRSS and VmHWM from /proc. Prints one JSON line; exits 1 if the worker's
peak reaches --max-rss-mib or a small call takes --max-latency-ms or more.
Standard library only; run.sh starts a platform for it.

    measure.py --api URL --big-key KEY --small-key KEY --worker-pid PID
"""
import argparse
import json
import random
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request

INPUTS, CHARS = 2048, 254
MODEL = "all-minilm-l6-v2"


def large_inputs():
    # A letter or digit then a punctuation mark: every character is a word
    # piece of its own, so each input is truncated at 256 with [CLS] and [SEP].
    rng = random.Random(7)
    alnum, punct = "abcdefghijklmnopqrstuvwxyz0123456789", ".,;:!?-+*/"
    return ["".join(rng.choice(alnum) + rng.choice(punct) for _ in range(CHARS // 2)) for _ in range(INPUTS)]


def post(api, key, body, timeout):
    data = json.dumps(body).encode()
    req = urllib.request.Request(
        api + "/v1/embeddings",
        data=data,
        headers={"authorization": "Bearer " + key, "content-type": "application/json"},
    )
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            payload = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        payload, status = e.read(), e.code
    except (TimeoutError, urllib.error.URLError):
        payload, status = b"", 0  # no answer in time
    return status, time.perf_counter() - t, payload, len(data)


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) / 1024  # MiB
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--api", required=True)
    ap.add_argument("--big-key", required=True)
    ap.add_argument("--small-key", required=True)
    ap.add_argument("--worker-pid", type=int, required=True)
    ap.add_argument("--small-every-ms", type=int, default=500)
    ap.add_argument("--max-rss-mib", type=float, default=1024)
    ap.add_argument("--max-latency-ms", type=float, default=1000)
    ap.add_argument("--max-seconds", type=float, default=0, help="stop measuring after this long (0: when the large request is answered)")
    ap.add_argument("--verbose", action="store_true", help="each small call's time and latency on stderr")
    a = ap.parse_args()

    # Warm: one small call per tenant (connections, caches, first dispatch).
    for key in (a.big_key, a.small_key):
        post(a.api, key, {"model": MODEL, "input": "warm up"}, 60)
    before = proc_status(a.worker_pid)
    samples, stop = [], threading.Event()

    def sample():
        last = 0
        while not stop.is_set():
            try:
                samples.append(proc_status(a.worker_pid))
            except FileNotFoundError:
                break
            if a.verbose and time.perf_counter() - last >= 5:
                last = time.perf_counter()
                print(f"worker VmRSS {samples[-1]['VmRSS']:7.1f} MiB, VmHWM {samples[-1]['VmHWM']:7.1f} MiB", file=sys.stderr)
            time.sleep(0.05)

    big = {}

    def send_large():
        status, secs, payload, sent = post(a.api, a.big_key, {"model": MODEL, "input": large_inputs()}, 900)
        big.update(status=status, seconds=round(secs, 2), request_bytes=sent, response_bytes=len(payload))
        try:
            v = json.loads(payload)
            big["prompt_tokens"] = v.get("usage", {}).get("prompt_tokens")
            big["vectors"] = len(v.get("data", []))
            big["error"] = v.get("error")
        except ValueError:
            pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    large = threading.Thread(target=send_large, daemon=True)
    large.start()
    t0 = time.perf_counter()
    end = t0 + a.max_seconds if a.max_seconds else float("inf")
    time.sleep(2)  # the large job is queued, dispatched and running
    latencies, statuses = [], []
    while large.is_alive() and time.perf_counter() < end:
        wait = min(120, end - time.perf_counter())
        if wait <= 0:
            break
        status, secs, _, _ = post(a.api, a.small_key, {"model": MODEL, "input": "how fast is the other tenant served?"}, wait)
        latencies.append(secs * 1000)
        statuses.append(status)
        if a.verbose:
            print(f"small call at {time.perf_counter() - t0:7.2f} s: {status} in {secs * 1000:7.1f} ms", file=sys.stderr)
        time.sleep(a.small_every_ms / 1000)
    large.join(None if a.max_seconds == 0 else max(0, end - time.perf_counter()))
    time.sleep(1)  # the result is written and cached after the reply
    stop.set()
    sampler.join()
    peak = max([s.get("VmHWM", 0) for s in samples] + [0])
    p95 = sorted(latencies)[int(len(latencies) * 0.95)] if latencies else None
    result = {
        "worker_rss_before_mib": round(before.get("VmRSS", 0), 1),
        "worker_peak_rss_mib": round(peak, 1),
        "worker_rss_after_mib": round(samples[-1].get("VmRSS", 0), 1) if samples else None,
        "large": big or "not answered within --max-seconds",
        "small_calls": len(latencies),
        "small_statuses": sorted(set(statuses)),
        "small_p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "small_p95_ms": round(p95, 1) if latencies else None,
        "small_max_ms": round(max(latencies), 1) if latencies else None,
    }
    print(json.dumps(result))
    ok = (
        peak < a.max_rss_mib
        and latencies
        and max(latencies) < a.max_latency_ms
        and set(statuses) == {200}
        and big.get("status") == 200
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
