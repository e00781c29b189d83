"""The official openai client against a running platform: the Batch API.

Upload, create, poll to completed, download the output, join by custom_id;
a chat batch cancelled mid-way (partial output first, then batch_cancelled
lines in its error file); a completions batch; a file with a duplicate
custom_id and a wrong url fails with those line numbers; retried creates
give the same batch; list both with pagination; another tenant gets 404 for
the batch, its files and their content.

Env: OPENAI_BASE_URL (…/v1), OPENAI_API_KEY (a tenant key), OTHER_API_KEY
(another tenant's key). Exits non-zero on any mismatch.
"""
import io
import json
import math
import os
import sys
import time

import urllib.request
import openai

client = openai.OpenAI()
other = openai.OpenAI(api_key=os.environ["OTHER_API_KEY"])
EMBED = "all-minilm-l6-v2"
CHAT = "smollm2-135m-instruct"


def jsonl(rows):
    return ("".join(json.dumps(r) + "\n" for r in rows)).encode()


def upload(rows, name="input.jsonl"):
    f = client.files.create(file=(name, io.BytesIO(jsonl(rows))), purpose="batch")
    assert f.object == "file" and f.purpose == "batch" and f.status == "processed", f
    assert f.filename == name and f.bytes == len(jsonl(rows)), f
    return f


def wait(batch_id, done, timeout=240):
    deadline = time.time() + timeout
    while True:
        b = client.batches.retrieve(batch_id)
        if done(b):
            return b
        if time.time() > deadline:
            sys.exit(f"batch {batch_id} did not get there in {timeout} s: {b}")
        time.sleep(0.25)


def ended(b):
    return b.status in ("completed", "failed", "expired", "cancelled")


def lines(file_id):
    text = client.files.content(file_id).text
    return [json.loads(l) for l in text.splitlines() if l.strip()]


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


# 1. An embeddings batch, start to finish.
texts = [f"sentence number {i} about {w}" for i, w in enumerate(
    ["cats", "dogs", "rain", "trains", "music", "tea", "maps", "snow"] * 4)]
rows = [
    {"custom_id": f"e-{i}", "method": "POST", "url": "/v1/embeddings",
     "body": {"model": EMBED, "input": t}}
    for i, t in enumerate(texts)
]
rows.append({"custom_id": "e-float", "method": "POST", "url": "/v1/embeddings",
             "body": {"model": EMBED, "input": ["two", "inputs"], "encoding_format": "float"}})
inp = upload(rows)
batch = client.batches.create(input_file_id=inp.id, endpoint="/v1/embeddings",
                              completion_window="24h", metadata={"run": "ci"})
assert batch.object == "batch" and batch.endpoint == "/v1/embeddings", batch
assert batch.completion_window == "24h" and batch.metadata == {"run": "ci"}, batch
assert batch.status in ("validating", "in_progress", "finalizing", "completed"), batch
assert batch.input_file_id == inp.id and batch.created_at > 0, batch

# A retry of the same create (the client sends no key) gives the same batch,
# and so does one with an Idempotency-Key.
again = client.batches.create(input_file_id=inp.id, endpoint="/v1/embeddings",
                              completion_window="24h", metadata={"run": "ci"})
assert again.id == batch.id, (again.id, batch.id)
keyed = client.batches.create(input_file_id=inp.id, endpoint="/v1/embeddings",
                              completion_window="24h", extra_headers={"Idempotency-Key": "k-1"})
keyed_again = client.batches.create(input_file_id=inp.id, endpoint="/v1/embeddings",
                                    completion_window="24h", extra_headers={"Idempotency-Key": "k-1"})
assert keyed.id != batch.id and keyed_again.id == keyed.id, (keyed.id, keyed_again.id)

done = wait(batch.id, ended)
assert done.status == "completed", done
rc = done.request_counts
assert (rc.total, rc.completed, rc.failed) == (len(rows), len(rows), 0), rc
for f in ("in_progress_at", "finalizing_at", "completed_at", "expires_at"):
    assert getattr(done, f), (f, done)
assert done.model == EMBED, done.model
assert done.usage.input_tokens > 0 and done.usage.output_tokens == 0, done.usage
assert done.usage.total_tokens == done.usage.input_tokens, done.usage
assert done.error_file_id is None, done.error_file_id
out = lines(done.output_file_id)
by_id = {l["custom_id"]: l for l in out}
assert len(out) == len(rows) == len(by_id), (len(out), len(by_id))
direct = client.embeddings.create(model=EMBED, input=texts[:4], encoding_format="float")
for i in range(4):
    line = by_id[f"e-{i}"]
    assert line["id"].startswith("batch_req_") and line["error"] is None, line
    resp = line["response"]
    assert resp["status_code"] == 200 and resp["request_id"], resp
    body = resp["body"]
    assert body["object"] == "list" and body["model"] == EMBED, body
    got = body["data"][0]["embedding"]
    assert len(got) == 384, len(got)
    assert cosine(got, direct.data[i].embedding) >= 0.9999, i
pair = by_id["e-float"]["response"]["body"]
assert [d["index"] for d in pair["data"]] == [0, 1], pair
assert pair["usage"]["prompt_tokens"] > 0, pair
meta = client.files.retrieve(done.output_file_id)
assert meta.purpose == "batch_output" and meta.filename == f"{batch.id}_output.jsonl", meta

# Cancelling a batch that has ended is a permanent refusal.
try:
    client.with_options(max_retries=0).batches.cancel(batch.id)
    sys.exit("cancelling a completed batch must be refused")
except openai.ConflictError as e:
    assert e.response.headers.get("x-should-retry") == "false", e.response.headers
    assert e.code == "batch_not_cancellable", e.code

# 2. A chat batch cancelled mid-way: finished lines stay, the rest become
# batch_cancelled lines in the error file.
n_chat = 120
chat_rows = [
    {"custom_id": f"c-{i}", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": CHAT, "max_tokens": 48, "temperature": 0,
              "messages": [{"role": "user", "content": f"Write a long story about the number {i}."}]}}
    for i in range(n_chat)
]
chat_in = upload(chat_rows, "chat.jsonl")
chat = client.batches.create(input_file_id=chat_in.id, endpoint="/v1/chat/completions",
                             completion_window="1h")
assert chat.completion_window == "1h", chat
running = wait(chat.id, lambda b: b.request_counts.completed >= 1 or ended(b))
assert running.status == "in_progress", f"the chat batch ended before it could be cancelled: {running}"
# Finished lines can be read before the batch ends (an extension).
req = urllib.request.Request(f"{str(client.base_url).rstrip('/')}/batches/{chat.id}/output",
                             headers={"Authorization": f"Bearer {client.api_key}"})
with urllib.request.urlopen(req, timeout=30) as partial:
    assert partial.status == 200, partial.status
    early = [json.loads(l) for l in partial.read().decode().splitlines()]
assert early and all(l["custom_id"].startswith("c-") and l["line"] >= 1 for l in early), early[:2]
assert early[0]["response"]["body"]["object"] == "chat.completion", early[0]

t0 = time.time()
cancelling = client.batches.cancel(chat.id)
assert cancelling.status in ("cancelling", "cancelled"), cancelling
assert cancelling.cancelling_at, cancelling
cancelled = wait(chat.id, ended, timeout=30)
took = time.time() - t0
assert cancelled.status == "cancelled" and cancelled.cancelled_at, cancelled
assert took < 15, f"cancel took {took:.1f} s"
rc = cancelled.request_counts
assert rc.total == n_chat and rc.completed >= 1 and rc.completed + rc.failed == n_chat, rc
assert rc.failed >= 1, f"every line finished before the cancel: {rc}"
ok = lines(cancelled.output_file_id) if cancelled.output_file_id else []
bad = lines(cancelled.error_file_id)
ids = [l["custom_id"] for l in ok + bad]
assert sorted(ids) == sorted(r["custom_id"] for r in chat_rows), "every custom_id exactly once"
assert len(ok) == rc.completed and len(bad) == rc.failed, (len(ok), len(bad), rc)
for l in ok:
    body = l["response"]["body"]
    assert body["object"] == "chat.completion" and body["model"] == CHAT, body
    assert body["choices"][0]["message"]["content"], body
    assert body["usage"]["completion_tokens"] <= 48, body["usage"]
for l in bad:
    assert l["response"] is None and l["error"]["code"] == "batch_cancelled", l
assert cancelled.usage.output_tokens >= rc.completed, cancelled.usage

# 3. A completions batch.
comp_rows = [
    {"custom_id": f"t-{i}", "method": "POST", "url": "/v1/completions",
     "body": {"model": CHAT, "prompt": "Once upon a time", "max_tokens": 4, "temperature": 0}}
    for i in range(3)
]
comp = client.batches.create(input_file_id=upload(comp_rows, "comp.jsonl").id,
                             endpoint="/v1/completions", completion_window="24h")
comp = wait(comp.id, ended)
assert comp.status == "completed" and comp.request_counts.completed == 3, comp
texts_out = {l["response"]["body"]["choices"][0]["text"] for l in lines(comp.output_file_id)}
assert len(texts_out) == 1 and texts_out != {""}, texts_out  # greedy: the same text thrice

# 4. Line problems fail the batch with their line numbers (from 1).
bad_rows = [
    {"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": EMBED, "input": "x"}},
    {"custom_id": "b", "method": "POST", "url": "/v1/embeddings", "body": {"model": EMBED, "input": "y"}},
    {"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": EMBED, "input": "z"}},
    {"custom_id": "c", "method": "POST", "url": "/v1/embeddings", "body": {"model": EMBED, "input": "w"}},
    {"custom_id": "d", "method": "POST", "url": "/v1/chat/completions", "body": {"model": EMBED, "input": "v"}},
]
failed = client.batches.create(input_file_id=upload(bad_rows, "bad.jsonl").id,
                               endpoint="/v1/embeddings", completion_window="24h")
assert failed.status == "failed" and failed.failed_at, failed
got = sorted((e.code, e.line) for e in failed.errors.data)
assert got == [("duplicate_custom_id", 3), ("url_mismatch", 5)], got
assert all(e.message for e in failed.errors.data), failed.errors

# An unusable file is a 400 at create.
try:
    client.batches.create(input_file_id="file-nope", endpoint="/v1/embeddings", completion_window="24h")
    sys.exit("a missing input file must be a 400")
except openai.BadRequestError as e:
    assert e.param == "input_file_id", e.param

# 5. Lists, page by page.
page = client.batches.list(limit=2)
assert len(page.data) == 2 and page.has_more, page
all_batches = [b.id for b in client.batches.list(limit=2)]  # the client follows the cursor
expected = {batch.id, keyed.id, chat.id, comp.id, failed.id}
assert set(all_batches) == expected and len(all_batches) == len(expected), all_batches
assert all_batches[0] == failed.id, "newest first"
all_files = [f for f in client.files.list(limit=3)]
names = {f.filename for f in all_files}
assert {"input.jsonl", "chat.jsonl", "comp.jsonl", "bad.jsonl"} <= names, names
assert f"{batch.id}_output.jsonl" in names and f"{chat.id}_error.jsonl" in names, names
assert len({f.id for f in all_files}) == len(all_files), "no file listed twice"

# 6. Another tenant sees none of it.
for call in (
    lambda: other.batches.retrieve(batch.id),
    lambda: other.batches.cancel(chat.id),
    lambda: other.files.retrieve(inp.id),
    lambda: other.files.content(inp.id),
    lambda: other.files.retrieve(done.output_file_id),
    lambda: other.files.content(done.output_file_id),
    lambda: other.files.delete(inp.id),
):
    try:
        call()
        sys.exit("another tenant reached this tenant's batch or file")
    except openai.NotFoundError:
        pass
assert [b for b in other.batches.list()] == [], "another tenant lists no batches"
assert [f for f in other.files.list()] == [], "another tenant lists no files"
try:
    other.batches.create(input_file_id=inp.id, endpoint="/v1/embeddings", completion_window="24h")
    sys.exit("another tenant's file must not be usable")
except openai.BadRequestError as e:
    assert e.param == "input_file_id"

print(f"ok: {len(rows)} embeddings lines, {rc.completed}/{n_chat} chat lines before the cancel "
      f"(cancelled in {took:.1f} s), 3 completions, line errors and isolation as expected")
