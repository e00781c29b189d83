#!/usr/bin/env python3
"""Medians of embed_bench / reference_engines JSON lines as a markdown table."""
import json
import statistics
import sys
from collections import defaultdict

rows = defaultdict(list)
peaks = []
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"):
        continue
    d = json.loads(line)
    if "peak_fp32_gflops" in d:
        peaks.append(d["peak_fp32_gflops"])
        continue
    rows[(d["tokens"], d["batch"], d["engine"])].append(d)

peak = statistics.median(peaks) if peaks else None
order = ["maas", "maas-int8", "onnxruntime2", "onnxruntime2-int8", "torch2", "torch1"]
engines = sorted({k[2] for k in rows}, key=lambda e: (order.index(e) if e in order else len(order), e))
# (numerator, denominator) of each ratio column, where both ran.
pairs = [(a, b) for a, b in [("maas", "torch2"), ("maas", "onnxruntime2"), ("maas-int8", "maas"),
                             ("maas-int8", "onnxruntime2-int8")] if a in engines and b in engines]
print(f"measured peak fp32 FMA rate (2 threads): {peak:.0f} GFLOP/s\n" if peak else "")
head = ("| tokens | batch | " + " | ".join(f"{e} sent/s" for e in engines) + " | "
        + " | ".join(f"{a} vs {b}" for a, b in pairs) + " | maas % of peak |")
print(head)
print("|" + "---|" * (head.count("|") - 1))
for (tokens, batch) in sorted({(k[0], k[1]) for k in rows}):
    med = {e: statistics.median(r["sentences_per_s"] for r in rows[(tokens, batch, e)]) for e in engines if rows.get((tokens, batch, e))}
    share = statistics.median(r["share_of_peak"] for r in rows[(tokens, batch, "maas")]) if rows.get((tokens, batch, "maas")) else None
    ratio = lambda a, b: f"{med[a] / med[b]:.2f}×" if a in med and b in med else "–"  # noqa: E731
    cells = " | ".join(f"{med[e]:.1f}" if e in med else "–" for e in engines)
    ratios = " | ".join(ratio(a, b) for a, b in pairs)
    print(f"| {tokens} | {batch} | {cells} | {ratios} | " + (f"{share * 100:.0f}% |" if share is not None else "– |"))
