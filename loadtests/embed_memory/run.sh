#!/usr/bin/env bash
# The largest admitted embeddings request against a fresh platform: starts
# the api, the scheduler and one worker from target/release against a new
# database and namespace, sends 2,048 inputs of 254 characters (256 word
# pieces each, ~0.5 MB of JSON) from one tenant while another tenant sends
# one-input calls, and samples the worker's VmRSS/VmHWM (measure.py). Prints
# one JSON line; exits 1 if the worker peaks at 1 GiB or more or one of the
# small calls takes 1 s or more. Removes its processes and database after.
#
#   cargo build --release --workspace --bins && scripts/fetch-models
#   loadtests/embed_memory/run.sh [--verbose]   # arguments go to measure.py
#   # the whole request in one forward pass, as before chunking:
#   MAAS_EMBED_MAX_BATCH_TOKENS=1000000 loadtests/embed_memory/run.sh
#
# MAAS_* variables in the environment reach the services (the sync wait is
# raised to 10 minutes unless set, so the large request runs to its end).
set -euo pipefail
cd "$(dirname "$0")/../.."
export MAAS_API_SYNC_TIMEOUT_MS="${MAAS_API_SYNC_TIMEOUT_MS:-600000}"
. loadtests/lib/platform.sh
trap platform_stop EXIT
platform_start embedmem all-minilm-l6-v2
big_key=$(key_of large)
small_key=$(key_of small)
python3 loadtests/embed_memory/measure.py --api "$api" --big-key "$big_key" \
  --small-key "$small_key" --worker-pid "$worker_pid" "$@"
