"""llama.cpp (llama-cpp-python, 2 threads) on the same GGUF and the same cases
as our engine's chat_bench example: prefill of a 128- and a 512-token prompt
(best of 3), and decode with 1, 4 and 16 sequences stepping together after a
128-token prompt each (llama_decode over a batch of one token per sequence).
Prints one JSON object per case.

    python loadtests/chat/llama_cpp_engine.py models [decode_tokens]
"""
import json
import sys
import time

import llama_cpp
from llama_cpp import Llama

models = sys.argv[1] if len(sys.argv) > 1 else "models"
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 64
path = f"{models}/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"


def prompt(n, salt):
    # The same ids as chat_bench: ordinary vocabulary, varied per sequence.
    return [1000 + (i * 37 + salt * 101) % 30000 for i in range(n)]


def decode_batch(ctx, batch, items):
    """items: (token, pos, seq, wants_logits)"""
    batch.n_tokens = len(items)
    for i, (tok, pos, seq, out) in enumerate(items):
        batch.token[i] = tok
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = out
    rc = llama_cpp.llama_decode(ctx, batch)
    if rc != 0:
        raise RuntimeError(f"llama_decode returned {rc}")


print(json.dumps({"engine": "llama.cpp", "version": llama_cpp.__version__, "threads": 2}))
llm = Llama(model_path=path, n_ctx=1024, n_batch=512, n_ubatch=512, n_threads=2, n_threads_batch=2, verbose=False)
llm.eval(prompt(32, 0))  # warm-up
for n in (128, 512):
    best = float("inf")
    p = prompt(n, 1)
    for _ in range(3):
        llm.reset()
        llm._ctx.kv_cache_clear() if hasattr(llm._ctx, "kv_cache_clear") else None
        t0 = time.perf_counter()
        llm.eval(p)
        best = min(best, time.perf_counter() - t0)
    print(json.dumps({"engine": "llama.cpp", "case": "prefill", "prompt": n, "tokens_per_s": round(n / best, 1)}))
del llm

llm = Llama(model_path=path, n_ctx=256, n_threads=2, n_threads_batch=2, verbose=False)
for seqs in (1, 4, 16):
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = seqs * (128 + steps + 8)
    params.n_batch = params.n_ubatch = 512
    params.n_seq_max = seqs
    params.n_threads = params.n_threads_batch = 2
    params.kv_unified = True
    ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
    batch = llama_cpp.llama_batch_init(512, 0, seqs)
    for s in range(seqs):
        p = prompt(128, s + 2)
        decode_batch(ctx, batch, [(t, i, s, i == len(p) - 1) for i, t in enumerate(p)])
    t0 = time.perf_counter()
    for step in range(steps):
        decode_batch(ctx, batch, [(1000, 128 + step, s, True) for s in range(seqs)])
    dt = time.perf_counter() - t0
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    print(json.dumps({"engine": "llama.cpp", "case": "decode", "sequences": seqs, "tokens_per_s": round(seqs * steps / dt, 1),
                      "step_ms": round(dt * 1e3 / steps, 2)}))
