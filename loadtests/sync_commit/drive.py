"""Sync echo jobs from CONCURRENCY threads for SECONDS; prints one JSON line
with throughput and latency percentiles (standard library only)."""
import argparse
import http.client
import json
import threading
import time
import urllib.parse


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--api", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    u = urllib.parse.urlparse(a.api)
    body = json.dumps({"model": "echo", "mode": "sync", "input": {"text": "ping"}})
    headers = {"authorization": f"Bearer {a.key}", "content-type": "application/json"}
    lat, errors, lock = [], [0], threading.Lock()
    warm_until = time.monotonic() + 1.0
    stop = warm_until + a.seconds

    def run():
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        mine, bad = [], 0
        while True:
            t0 = time.monotonic()
            if t0 >= stop:
                break
            c.request("POST", "/v1/jobs", body, headers)
            r = c.getresponse()
            r.read()
            t1 = time.monotonic()
            if t0 >= warm_until:
                if r.status == 200:
                    mine.append(t1 - t0)
                else:
                    bad += 1
        with lock:
            lat.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=run) for _ in range(a.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat.sort()
    pct = lambda q: round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 2)
    print(json.dumps({
        "label": a.label, "concurrency": a.concurrency, "jobs": len(lat), "errors": errors[0],
        "jobs_per_s": round(len(lat) / a.seconds, 1), "p50_ms": pct(0.5), "p99_ms": pct(0.99),
    }))


if __name__ == "__main__":
    main()
