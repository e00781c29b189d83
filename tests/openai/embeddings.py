"""The official openai client against a running platform: embeddings.

Env: OPENAI_BASE_URL (…/v1), OPENAI_API_KEY (a tenant key), REFERENCE (the
committed sentence-transformers reference file). Exits non-zero on any mismatch.
"""
import json
import math
import os
import sys

import openai

client = openai.OpenAI()
cases = json.load(open(os.environ["REFERENCE"], encoding="utf-8"))["cases"][:12]
texts = [c["input"] for c in cases]


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


# The client asks for base64 by default and decodes it; ask for floats too.
for fmt in (None, "float"):
    kwargs = {} if fmt is None else {"encoding_format": fmt}
    resp = client.embeddings.create(model="all-minilm-l6-v2", input=texts, **kwargs)
    assert len(resp.data) == len(cases), len(resp.data)
    for d, c in zip(resp.data, cases):
        assert len(d.embedding) == 384, len(d.embedding)
        cos = cosine(d.embedding, c["embedding"])
        assert cos >= 0.9999, (c["input"], cos)
    assert resp.usage.prompt_tokens > 0

single = client.embeddings.create(model="all-minilm-l6-v2", input="A man is eating food.")
assert len(single.data) == 1

try:
    client.embeddings.create(model="no-such-model", input="x")
    sys.exit("expected a NotFoundError")
except openai.NotFoundError as e:
    assert e.status_code == 404

print(f"ok: {len(cases)} embeddings match the reference (cosine >= 0.9999) in base64 and float")
