#!/usr/bin/env bash
# Chat benchmark: engine alone (ours and llama.cpp through llama-cpp-python,
# 2 threads each, alternating rounds, medians) and, if a platform is running,
# 16/4/1 streaming clients through the whole platform, and single streamed
# chat completions from llama-cpp-python in its own process. Markdown to stdout.
#
#   python3 -m venv .venv-ref && .venv-ref/bin/pip install llama-cpp-python openai
#   scripts/dev-up          # optional: for the whole-platform part
#   loadtests/chat/run.sh [rounds] [decode_tokens]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
steps=${2:-64}
py=${PYTHON:-.venv-ref/bin/python}
out=$(mktemp -d)
cargo build --release -q -p maas-models --example chat_bench
platform=0
if [ -s .run/demo_key ] && curl -fsS http://127.0.0.1:8080/readyz >/dev/null 2>&1; then platform=1; fi
for r in $(seq 1 "$rounds"); do
  target/release/examples/chat_bench models "$steps" > "$out/maas.$r"
  "$py" loadtests/chat/llama_cpp_engine.py models "$steps" > "$out/llama.$r" 2>/dev/null
  if [ "$platform" = 1 ]; then
    OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_API_KEY=$(cat .run/demo_key) \
      "$py" loadtests/chat/whole_platform.py 1,4,16 128 > "$out/platform.$r"
    "$py" loadtests/chat/llama_cpp_stream.py models 4 128 > "$out/llama-stream.$r" 2>/dev/null
  fi
done
cat "$out"/* | "$py" loadtests/chat/table.py
