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
bin=${MAAS_BIN_DIR:-target/release}
pg=${MAAS_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
db=maas_embedmem_$$
work=$(mktemp -d)
export MAAS_DATABASE_URL="${pg%/*}/$db"
export MAAS_NAMESPACE="embedmem-$$"
export MAAS_JWT_SECRET
MAAS_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export MAAS_LOG_FORMAT=json MAAS_API_LISTEN=127.0.0.1:0 MAAS_AMQP_QUEUE_EXPIRES_MS=600000
export MAAS_MODELS_DIR="${MAAS_MODELS_DIR:-$PWD/models}"
export MAAS_API_SYNC_TIMEOUT_MS="${MAAS_API_SYNC_TIMEOUT_MS:-600000}"
# Stopping does not wait for the large request.
export MAAS_API_SHUTDOWN_TIMEOUT_SECS="${MAAS_API_SHUTDOWN_TIMEOUT_SECS:-2}"
export MAAS_WORKER_SHUTDOWN_GRACE_MS="${MAAS_WORKER_SHUTDOWN_GRACE_MS:-2000}"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  psql "$pg" -qX -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null || true
  # Our Redis keys (the broker's queues expire on their own).
  if command -v redis-cli >/dev/null; then
    redis-cli -u "${MAAS_REDIS_URL:-redis://127.0.0.1:6379}" --scan --pattern "$MAAS_NAMESPACE:*" |
      xargs -r -n 500 redis-cli -u "${MAAS_REDIS_URL:-redis://127.0.0.1:6379}" del >/dev/null || true
  fi
  [ -n "${KEEP_LOGS:-}" ] && echo "logs in $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT

psql "$pg" -qX -c "CREATE DATABASE \"$db\"" >/dev/null
"$bin/maas-api" migrate >/dev/null
start() { # name binary
  "$bin/$2" > "$work/$1.out" 2> "$work/$1.log" < /dev/null &
  pids+=($!)
}
start api maas-api
start scheduler maas-scheduler
start worker maas-worker
worker_pid=${pids[2]}

port=
for _ in $(seq 1 100); do
  port=$(sed -n 's/.*listening on port \([0-9]*\).*/\1/p' "$work/api.out" | head -n 1)
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || { echo "error: the api did not start; see $work/api.log" >&2; KEEP_LOGS=1; exit 1; }
api="http://127.0.0.1:$port"
for _ in $(seq 1 600); do
  n=$(psql "$MAAS_DATABASE_URL" -qtAX -c "SELECT count(*) FROM workers, jsonb_array_elements(models) m WHERE status = 'alive' AND m->>'model' = 'all-minilm-l6-v2'" 2>/dev/null || echo 0)
  [ "${n:-0}" -ge 1 ] && break
  sleep 0.2
done
[ "${n:-0}" -ge 1 ] || { echo "error: no worker serves all-minilm-l6-v2; see $work/worker.log" >&2; KEEP_LOGS=1; exit 1; }
sleep 2.5 # the api re-reads which models are served every 2 s

token=$("$bin/maas-api" admin-token --sub embed-memory --ttl-secs 3600)
key_of() { # tenant name → a new key of a new tenant
  local t
  t=$(curl -fsS -X POST "$api/admin/v1/tenants" -H "authorization: Bearer $token" \
    -H 'content-type: application/json' -d "{\"name\":\"$1\"}" | python3 -c 'import sys,json; print(json.load(sys.stdin)["id"])')
  curl -fsS -X POST "$api/admin/v1/tenants/$t/keys" -H "authorization: Bearer $token" \
    -H 'content-type: application/json' -d '{"name":"embed-memory"}' | python3 -c 'import sys,json; print(json.load(sys.stdin)["key"])'
}
big_key=$(key_of large)
small_key=$(key_of small)
python3 loadtests/embed_memory/measure.py --api "$api" --big-key "$big_key" \
  --small-key "$small_key" --worker-pid "$worker_pid" "$@"
