#!/usr/bin/env bash
# Batch API benchmark: a 50,000-line embeddings batch through the whole
# platform (api, scheduler, one worker, Postgres, Redis, RabbitMQ, all on
# this machine) against the engine alone on the same file, and another
# tenant's single calls during the batch against idle. Markdown to stdout.
#
#   loadtests/batches/run.sh [lines]
set -euo pipefail
cd "$(dirname "$0")/../.."
lines=${1:-50000}
cargo build --release -q --workspace --bins
cargo build --release -q -p maas-models --example embed_lines
# shellcheck source=../lib/platform.sh
source loadtests/lib/platform.sh
tmp=$(mktemp -d)
trap 'platform_stop; rm -rf "$tmp"' EXIT
python3 loadtests/batches/bench.py make "$lines" > "$tmp/lines.jsonl"
# The engine alone first, with nothing else running.
target/release/examples/embed_lines models "$tmp/lines.jsonl" "${MAAS_EMBED_MAX_BATCH_TOKENS:-1024}" > "$tmp/engine.json"
platform_start batchbench all-minilm-l6-v2
key_a=$(key_of batcher)
key_b=$(key_of interactive)
API=$api KEY_A=$key_a KEY_B=$key_b python3 loadtests/batches/bench.py run "$tmp/lines.jsonl" "$tmp/engine.json"
