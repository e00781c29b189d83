# Shared by the load tests: starts the api, a scheduler and one worker from
# target/release against a fresh database and namespace, and removes them
# (and the database) on exit. Source it, then call `platform_start`; it sets
# `api` (the base URL), `worker_pid` and `work` (the folder with the logs).
# `key_of NAME` creates a tenant and prints a new key of it. MAAS_*
# variables in the environment reach the services.

bin=${MAAS_BIN_DIR:-target/release}
pg=${MAAS_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
pids=()

platform_stop() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  pids=()
  # This run's Redis keys (its queues expire on their own).
  if [ -n "${MAAS_NAMESPACE:-}" ] && command -v redis-cli >/dev/null; then
    redis-cli -u "${MAAS_REDIS_URL:-redis://127.0.0.1:6379}" --scan --pattern "$MAAS_NAMESPACE:*" |
      xargs -r -n 500 redis-cli -u "${MAAS_REDIS_URL:-redis://127.0.0.1:6379}" del >/dev/null || true
  fi
  if [ -n "${db:-}" ]; then
    psql "$pg" -qX -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null || true
  fi
  if [ -n "${work:-}" ]; then
    if [ -n "${KEEP_LOGS:-}" ]; then echo "logs in $work" >&2; else rm -rf "$work"; fi
  fi
}

# platform_start NAME [MODEL]: waits until a worker serves MODEL (default echo).
platform_start() {
  local name=$1 model=${2:-echo} n port
  db=maas_${name}_$$_$RANDOM
  work=$(mktemp -d)
  export MAAS_DATABASE_URL="${pg%/*}/$db"
  export MAAS_NAMESPACE="$name-$$-$RANDOM"
  MAAS_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  export MAAS_JWT_SECRET
  export MAAS_LOG_FORMAT=json MAAS_API_LISTEN=127.0.0.1:0 MAAS_AMQP_QUEUE_EXPIRES_MS=600000
  export MAAS_MODELS_DIR="${MAAS_MODELS_DIR:-$PWD/models}"
  psql "$pg" -qX -c "CREATE DATABASE \"$db\"" >/dev/null
  "$bin/maas-api" migrate >/dev/null
  local svc
  for svc in api scheduler worker; do
    "$bin/maas-$svc" > "$work/$svc.out" 2> "$work/$svc.log" < /dev/null &
    pids+=($!)
  done
  worker_pid=${pids[2]}
  port=
  for _ in $(seq 1 100); do
    port=$(sed -n 's/.*listening on port \([0-9]*\).*/\1/p' "$work/api.out" | head -n 1)
    [ -n "$port" ] && break
    sleep 0.1
  done
  [ -n "$port" ] || { echo "error: the api did not start; see $work/api.log" >&2; KEEP_LOGS=1; return 1; }
  api="http://127.0.0.1:$port"
  for _ in $(seq 1 600); do
    n=$(psql "$MAAS_DATABASE_URL" -qtAX -c "SELECT count(*) FROM workers, jsonb_array_elements(models) m WHERE status = 'alive' AND (m->>'model' = '$model' OR m->>'model' LIKE '$model@%')" 2>/dev/null || echo 0)
    [ "${n:-0}" -ge 1 ] && break
    sleep 0.2
  done
  [ "${n:-0}" -ge 1 ] || { echo "error: no worker serves $model; see $work/worker.log" >&2; KEEP_LOGS=1; return 1; }
  sleep 2.5 # the api re-reads which models are served every 2 s
  token=$("$bin/maas-api" admin-token --sub loadtest --ttl-secs 3600)
}

key_of() {
  local t
  t=$(curl -fsS -X POST "$api/admin/v1/tenants" -H "authorization: Bearer $token" \
    -H 'content-type: application/json' -d "{\"name\":\"$1\"}" | python3 -c 'import sys,json; print(json.load(sys.stdin)["id"])')
  curl -fsS -X POST "$api/admin/v1/tenants/$t/keys" -H "authorization: Bearer $token" \
    -H 'content-type: application/json' -d '{"name":"loadtest"}' | python3 -c 'import sys,json; print(json.load(sys.stdin)["key"])'
}
