#!/usr/bin/env python3
"""Engine-alone speed of all-MiniLM-L6-v2 in PyTorch (sentence-transformers'
model, 2 threads and 1 thread) and onnxruntime (2 threads; `onnxruntime2-int8`
is the same graph through onnxruntime's own int8 dynamic quantisation), on
token-id inputs of exact lengths, in the JSON-lines format of `embed_bench`.

    python reference_engines.py MODELS_DIR SECONDS_PER_CASE [ENGINES] [CASES]
    python reference_engines.py MODELS_DIR accuracy   # int8 cosine vs the committed reference
"""
import json
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModel  # noqa: E402

models = sys.argv[1] if len(sys.argv) > 1 else "models"
secs = float(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] != "accuracy" else 2.0
engines = sys.argv[3].split(",") if len(sys.argv) > 3 else ["torch2", "torch1", "onnxruntime2"]
path = os.path.join(models, "all-minilm-l6-v2")
model = AutoModel.from_pretrained(path).eval()


def ids_for(batch, length):
    ids = np.zeros((batch, length), dtype=np.int64)
    for b in range(batch):
        ids[b, 0] = 101
        ids[b, 1:-1] = [1000 + ((i * 7 + b * 13) % 20000) for i in range(length - 2)]
        ids[b, -1] = 102
    return ids


def pool(hidden, mask):
    m = mask[..., None].astype(hidden.dtype)
    v = (hidden * m).sum(1) / m.sum(1)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def torch_run(ids):
    t = torch.from_numpy(ids)
    mask = torch.ones_like(t)
    with torch.inference_mode():
        h = model(input_ids=t, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).float()
        v = (h * m).sum(1) / m.sum(1)
        return torch.nn.functional.normalize(v, dim=1)


def onnx_session(int8=False):
    import onnxruntime as ort

    onnx_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".cache", "minilm.onnx")
    if not os.path.exists(onnx_path):
        os.makedirs(os.path.dirname(onnx_path), exist_ok=True)
        dummy = torch.from_numpy(ids_for(2, 16))

        class Encoder(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask):
                return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        torch.onnx.export(
            Encoder(model), (dummy, torch.ones_like(dummy)), onnx_path,
            input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
            dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}, "last_hidden_state": {0: "b", 1: "s"}},
            opset_version=17, dynamo=False,
        )
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        int8_path = onnx_path.replace(".onnx", ".int8.onnx")
        if not os.path.exists(int8_path):
            quantize_dynamic(onnx_path, int8_path, weight_type=QuantType.QInt8)
        onnx_path = int8_path
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])


def measure(fn):
    fn()
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < secs or len(times) < 3:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def onnx_run(sess, ids):
    mask = np.ones_like(ids)
    h = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    return pool(h, mask)


if len(sys.argv) > 2 and sys.argv[2] == "accuracy":
    # Cosine of onnxruntime's int8 model to sentence-transformers' vectors
    # on the committed inputs (each alone, from their committed ids).
    ref = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                       "crates", "maas-models", "tests", "data", "minilm_reference.json")
    cases = json.load(open(ref))["cases"]
    sess = onnx_session(int8=True)
    cos = []
    for c in cases:
        v = onnx_run(sess, np.array([c["ids"]], dtype=np.int64))[0]
        w = np.array(c["embedding"], dtype=np.float64)
        cos.append(float(v @ w / (np.linalg.norm(v) * np.linalg.norm(w))))
    print(json.dumps({"engine": "onnxruntime2-int8", "cases": len(cos), "worst_cosine": round(min(cos), 6),
                      "mean_cosine": round(sum(cos) / len(cos), 6)}))
    sys.exit(0)

only = None
if len(sys.argv) > 4 and sys.argv[4]:
    only = {tuple(int(x) for x in c.split("x")) for c in sys.argv[4].split(",")}

for engine in engines:
    if engine.startswith("torch"):
        torch.set_num_threads(int(engine[-1]))
        run = lambda ids: torch_run(ids)  # noqa: E731
    else:
        sess = onnx_session(int8=engine.endswith("-int8"))
        run = lambda ids, sess=sess: onnx_run(sess, ids)  # noqa: E731

    for length in (16, 64, 256):
        for batch in (1, 8, 32, 128):
            if only is not None and (length, batch) not in only:
                continue
            ids = ids_for(batch, length)
            med = measure(lambda: run(ids))
            print(json.dumps({"engine": engine, "batch": batch, "tokens": length,
                              "sentences_per_s": round(batch / med, 1), "tokens_per_s": round(batch * length / med),
                              "median_ms": round(med * 1e3, 3)}), flush=True)
