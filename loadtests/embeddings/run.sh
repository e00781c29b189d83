#!/usr/bin/env bash
# Embeddings benchmark: engine alone (ours in f16 and int8, PyTorch 2
# threads, onnxruntime 2 threads in f32 and with its own int8 dynamic
# quantisation; alternating rounds, medians), the int8 versions' accuracy
# against sentence-transformers, and, if a platform is running,
# whole-platform latency/throughput with the openai client against
# sentence-transformers. Writes the tables to stdout (markdown).
#
#   python3 -m venv .venv-ref && .venv-ref/bin/pip install sentence-transformers torch onnx onnxruntime openai
#   scripts/dev-up          # optional: for the whole-platform part
#   loadtests/embeddings/run.sh [rounds] [seconds_per_case] [cases, e.g. 16x1,64x32]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
secs=${2:-1}
cases=${3:-all}
py=${PYTHON:-.venv-ref/bin/python}
out=$(mktemp -d)
cargo build --release -q -p maas-models --example embed_bench
for r in $(seq 1 "$rounds"); do
  target/release/examples/embed_bench models "$secs" cpu "$cases" f16,int8 > "$out/maas.$r"
  "$py" loadtests/embeddings/reference_engines.py models "$secs" torch2,onnxruntime2,onnxruntime2-int8 \
    "$([ "$cases" = all ] || echo "$cases")" > "$out/ref.$r" 2>/dev/null
done
cat "$out"/maas.* "$out"/ref.* | "$py" loadtests/embeddings/table.py
echo
echo "int8 accuracy (cosine to sentence-transformers on the committed inputs):"
cargo test --release -q -p maas-models --test minilm int8 -- --nocapture 2>&1 | grep -o 'int8: worst.*' | sed 's/^/  maas-int8 /'
"$py" loadtests/embeddings/reference_engines.py models accuracy 2>/dev/null | sed 's/^/  /' 
if [ -s .run/demo_key ] && curl -fsS http://127.0.0.1:8080/readyz >/dev/null 2>&1; then
  OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_API_KEY=$(cat .run/demo_key) "$py" loadtests/embeddings/whole_platform.py models "$rounds"
fi
