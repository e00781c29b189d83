#!/usr/bin/env bash
# What a durable result costs on the sync path: sync `echo` jobs (no model
# time, so the platform's own cost is all there is) at a fixed concurrency,
# with the worker's results committed durably (the default: a WAL flush per
# result, shared by concurrent commits) and relaxed, alternating, several
# rounds of each on a fresh platform. Prints a JSON line per round and a
# summary line of medians.
#
#   cargo build --release --workspace --bins
#   loadtests/sync_commit/run.sh [ROUNDS] [CONCURRENCY] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
concurrency=${2:-16}
seconds=${3:-10}
. loadtests/lib/platform.sh
trap platform_stop EXIT
# No rate limits in the way: the default quota of a new tenant is unlimited.
results=()
for r in $(seq 1 "$rounds"); do
  for mode in durable relaxed; do
    export MAAS_WORKER_RESULT_COMMIT=$mode MAAS_WORKER_SLOTS=64
    platform_start synccommit
    key=$(key_of "bench-$mode-$r")
    line=$(python3 loadtests/sync_commit/drive.py --api "$api" --key "$key" \
      --concurrency "$concurrency" --seconds "$seconds" --label "$mode")
    echo "$line"
    results+=("$line")
    platform_stop
  done
done
printf '%s\n' "${results[@]}" | python3 -c '
import json, statistics, sys
rows = [json.loads(l) for l in sys.stdin if l.strip()]
out = {}
for mode in ("durable", "relaxed"):
    rs = [r for r in rows if r["label"] == mode]
    out[mode] = {k: statistics.median(r[k] for r in rs) for k in ("jobs_per_s", "p50_ms", "p99_ms")}
out["durable_over_relaxed_p50"] = round(out["durable"]["p50_ms"] / out["relaxed"]["p50_ms"], 3)
out["durable_over_relaxed_throughput"] = round(out["durable"]["jobs_per_s"] / out["relaxed"]["jobs_per_s"], 3)
print(json.dumps({"summary": out}))
'
