#!/usr/bin/env bash
# The chaos suite (loadtests/chaos/chaos.py): the whole platform under a
# steady mixed load while workers, schedulers, an api instance, Postgres,
# Redis, RabbitMQ and the network between hosts fail one after another, on
# private instances and network namespaces of its own. Needs root, the
# release binaries and (for the embeddings and chat load) scripts/fetch-models.
#
#   cargo build --release --workspace --bins
#   loadtests/chaos/run.sh [--short] [--report FILE] [--keep] [--no-models]
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in ip tc psql redis-server redis-cli rabbitmq-server rabbitmqctl; do
  command -v "$tool" >/dev/null || { echo "error: $tool is missing (scripts/ensure-services installs the servers)" >&2; exit 1; }
done
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { echo "error: initdb is missing (apt-get install postgresql)" >&2; exit 1; }
exec timeout 1200 python3 loadtests/chaos/chaos.py "$@"
