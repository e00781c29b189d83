"""One streamed chat completion at a time from llama.cpp (llama-cpp-python
in this process, 2 threads): the same messages, max_tokens and sampling as
loadtests/chat/whole_platform.py's single stream. Reports decode tokens/s
after the first token and the time to first token, as one JSON line.

    python loadtests/chat/llama_cpp_stream.py models [requests] [max_tokens]
"""
import json
import statistics
import sys
import time

from llama_cpp import Llama

models = sys.argv[1] if len(sys.argv) > 1 else "models"
requests = int(sys.argv[2]) if len(sys.argv) > 2 else 4
max_tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 128
TOPICS = ["the sea", "a city at night", "mountains", "a library", "the moon", "autumn", "a train journey", "a garden"]
llm = Llama(model_path=f"{models}/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf", n_ctx=2048, n_threads=2,
            n_threads_batch=2, verbose=False)
llm.create_chat_completion(messages=[{"role": "user", "content": "hi"}], max_tokens=2)  # warm-up
rates, ttfts, tokens = [], [], 0
for i in range(requests):
    t0 = time.perf_counter()
    first, text = None, ""
    for chunk in llm.create_chat_completion(
            messages=[{"role": "user", "content": f"Write a long, detailed story about {TOPICS[i % len(TOPICS)]}."}],
            max_tokens=max_tokens, temperature=0.8, seed=i, stream=True):
        piece = chunk["choices"][0]["delta"].get("content")
        if piece:
            first = first or time.perf_counter()
            text += piece
    end = time.perf_counter()
    n = len(llm.tokenize(text.encode(), add_bos=False, special=True))
    tokens += n
    ttfts.append(first - t0)
    rates.append((n - 1) / (end - first))
print(json.dumps({"engine": "llama.cpp-in-process", "case": "stream", "streams": 1, "completion_tokens": tokens,
                  "per_stream_tokens_per_s_p50": round(statistics.median(rates), 1),
                  "ttft_p50_ms": round(1e3 * statistics.median(ttfts), 1)}))
