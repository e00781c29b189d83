"""The official openai client against a running platform: webhooks.

Registers an endpoint with client.webhooks.create (a local receiver that
fails its first delivery), runs a batch to completed and a batch that fails
validation, and checks that each event arrives, retried after the failure
with the same webhook-id, and that client.webhooks.unwrap() verifies it;
rotates the secret keeping the old one (two signatures, each verifies) and
without (one); sends a test event; reads the delivery log; a second endpoint
that always answers 500 ends failed after its last attempt; another tenant
gets 404 for the endpoint.

Env: OPENAI_BASE_URL (…/v1), OPENAI_API_KEY (a tenant key), OTHER_API_KEY
(another tenant's key). The platform runs with MAAS_WEBHOOK_ALLOW_PRIVATE
and MAAS_WEBHOOK_RETRY_SCHEDULE=1,1. Exits non-zero on any mismatch.
"""
import http.server
import io
import json
import os
import sys
import threading
import time
import urllib.request

import openai

client = openai.OpenAI()
other = openai.OpenAI(api_key=os.environ["OTHER_API_KEY"])
EMBED = "all-minilm-l6-v2"
BATCH_EVENTS = ["batch.completed", "batch.failed", "batch.cancelled", "batch.expired"]

received = {}  # path -> [(headers, body, status answered)]
lock = threading.Lock()
fail_next = {"/hooks": 0}


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        with lock:
            if self.path == "/always500":
                status = 500
            elif fail_next.get(self.path, 0) > 0:
                fail_next[self.path] -= 1
                status = 500
            else:
                status = 200
            headers = {k.lower(): v for k, v in self.headers.items()}
            received.setdefault(self.path, []).append((headers, body, status))
        self.send_response(status)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
threading.Thread(target=server.serve_forever, daemon=True).start()
base = f"http://127.0.0.1:{server.server_port}"


def arrivals(path, pred, n=1, timeout=60):
    deadline = time.time() + timeout
    while True:
        with lock:
            got = [r for r in received.get(path, []) if pred(r)]
        if len(got) >= n:
            return got
        if time.time() > deadline:
            sys.exit(f"{n} deliveries to {path} did not arrive in {timeout} s; got {received.get(path)}")
        time.sleep(0.1)


def about(batch_id):
    return lambda r: json.loads(r[1])["data"]["id"] == batch_id


def upload(rows):
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")


def wait(batch_id, timeout=120):
    deadline = time.time() + timeout
    while True:
        b = client.batches.retrieve(batch_id)
        if b.status in ("completed", "failed", "expired", "cancelled"):
            return b
        if time.time() > deadline:
            sys.exit(f"batch {batch_id} did not end: {b}")
        time.sleep(0.2)


def get(path):
    req = urllib.request.Request(os.environ["OPENAI_BASE_URL"].rstrip("/") + path,
                                 headers={"Authorization": f"Bearer {os.environ['OPENAI_API_KEY']}"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


def failing_batch():
    """A batch that fails validation at once (a duplicate custom_id)."""
    row = {"custom_id": "same", "method": "POST", "url": "/v1/embeddings",
           "body": {"model": EMBED, "input": "x"}}
    b = client.batches.create(input_file_id=upload([row, row]).id, endpoint="/v1/embeddings",
                              completion_window="24h")
    assert b.status == "failed", b
    return b


# Bad endpoints are refused with a clear error.
for bad, param in [({"url": "ftp://example.com/x", "event_types": ["batch.completed"]}, "url"),
                   ({"url": base + "/hooks", "event_types": ["response.completed"]}, "event_types"),
                   ({"url": base + "/hooks", "event_types": []}, "event_types")]:
    try:
        client.webhooks.create(name="bad", **bad)
        sys.exit(f"{bad} must be refused")
    except openai.BadRequestError as e:
        assert e.param == param, (e.param, param, e)

ep = client.webhooks.create(name="ci", url=base + "/hooks", event_types=BATCH_EVENTS)
secret = ep.signing_secret
assert ep.object == "webhook_endpoint" and ep.id.startswith("we_"), ep
assert secret.startswith("whsec_") and ep.signing_secret_hint.endswith(secret[-4:]), ep
assert ep.event_types == BATCH_EVENTS and ep.url == base + "/hooks" and ep.created_at > 0, ep
shown = client.webhooks.retrieve(ep.id)
assert shown.id == ep.id and "signing_secret" not in shown.model_dump(), shown
assert ep.id in [e.id for e in client.webhooks.list()], "listed"
sink = client.webhooks.create(name="broken", url=base + "/always500", event_types=["batch.failed"])

# Another tenant sees nothing of it.
for call in (lambda: other.webhooks.retrieve(ep.id), lambda: other.webhooks.delete(ep.id),
             lambda: other.webhooks.rotate_secret(ep.id)):
    try:
        call()
        sys.exit("another tenant must get 404")
    except openai.NotFoundError:
        pass
assert ep.id not in [e.id for e in other.webhooks.list()], "other tenant lists it"

# 1. batch.completed: the first attempt is answered 500, the retry 200.
with lock:
    fail_next["/hooks"] = 1
rows = [{"custom_id": f"r-{i}", "method": "POST", "url": "/v1/embeddings",
         "body": {"model": EMBED, "input": f"line {i}"}} for i in range(3)]
batch = client.batches.create(input_file_id=upload(rows).id, endpoint="/v1/embeddings",
                              completion_window="24h")
assert wait(batch.id).status == "completed"
tries = arrivals("/hooks", about(batch.id), n=2)
assert [t[2] for t in tries[:2]] == [500, 200], [t[2] for t in tries]
assert tries[0][0]["webhook-id"] == tries[1][0]["webhook-id"], "a retry keeps its webhook-id"
assert tries[0][1] == tries[1][1], "a retry sends the same body"
for headers, body, _ in tries[:2]:
    event = client.webhooks.unwrap(body, headers, secret=secret)
    assert event.type == "batch.completed" and event.data.id == batch.id, event
    assert event.object == "event" and event.id.startswith("evt_") and event.created_at > 0, event
    assert headers["content-type"] == "application/json", headers
    assert len(headers["webhook-signature"].split()) == 1, headers
    assert set(json.loads(body)) == {"id", "object", "created_at", "type", "data"}, body
# A wrong secret or a changed body does not verify.
for b, s in [(tries[1][1], "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB"),
             (tries[1][1].replace(b"batch.completed", b"batch.cancelled"), secret)]:
    try:
        client.webhooks.unwrap(b, tries[1][0], secret=s)
        sys.exit("a bad signature must not verify")
    except openai.InvalidWebhookSignatureError:
        pass

# 2. batch.failed, to both endpoints.
failed = failing_batch()
(hit,) = arrivals("/hooks", about(failed.id))
assert client.webhooks.unwrap(hit[1], hit[0], secret=secret).type == "batch.failed"

# 3. Rotation keeping the old secret: two signatures, each verifies.
rotated = client.webhooks.rotate_secret(ep.id, keep_old_secret_active_for_24_hours=True)
new_secret = rotated.signing_secret
assert new_secret != secret and new_secret.startswith("whsec_"), rotated
b2 = failing_batch()
(hit,) = arrivals("/hooks", about(b2.id))
assert len(hit[0]["webhook-signature"].split()) == 2, hit[0]["webhook-signature"]
for s in (secret, new_secret):
    assert client.webhooks.unwrap(hit[1], hit[0], secret=s).data.id == b2.id

# 4. Rotation dropping the old secret at once; a test event.
newest = client.webhooks.rotate_secret(ep.id).signing_secret
t = client.webhooks.test(ep.id, event_type="batch.expired")
assert t.object == "webhook_endpoint.test" and t.status_code == 200, t
assert t.webhook_endpoint_id == ep.id and t.event_type == "batch.expired", t
(hit,) = arrivals("/hooks", lambda r: json.loads(r[1])["type"] == "batch.expired")
assert len(hit[0]["webhook-signature"].split()) == 1, hit[0]
assert client.webhooks.unwrap(hit[1], hit[0], secret=newest).type == "batch.expired"
try:
    client.webhooks.unwrap(hit[1], hit[0], secret=new_secret)
    sys.exit("the rotated-out secret must not verify")
except openai.InvalidWebhookSignatureError:
    pass

# 5. The delivery log: the completed event took two attempts.
log = get(f"/webhook_endpoints/{ep.id}/deliveries")["data"]
done = [d for d in log if d["event_type"] == "batch.completed"]
assert len(done) == 1 and done[0]["status"] == "delivered" and done[0]["attempts"] == 2, done
assert [a["status_code"] for a in done[0]["attempt_log"]] == [500, 200], done[0]
assert done[0]["id"] == tries[0][0]["webhook-id"], (done[0]["id"], tries[0][0])

# 6. The endpoint that always fails (sent both batch.failed events) ends
# `failed` after 1 + 2 attempts of each.
deadline = time.time() + 60
while True:
    sl = get(f"/webhook_endpoints/{sink.id}/deliveries")["data"]
    if len(sl) == 2 and all(d["status"] == "failed" for d in sl):
        break
    if time.time() > deadline:
        sys.exit(f"the failing endpoint's deliveries did not end failed: {sl}")
    time.sleep(0.2)
assert all(d["attempts"] == 3 and d["last_status_code"] == 500 for d in sl), sl

# 7. Update and delete.
up = client.webhooks.update(ep.id, name="renamed", event_types=["batch.completed"])
assert up.name == "renamed" and up.event_types == ["batch.completed"], up
gone = client.webhooks.delete(ep.id)
assert gone.deleted and gone.id == ep.id, gone
try:
    client.webhooks.retrieve(ep.id)
    sys.exit("a deleted endpoint must be gone")
except openai.NotFoundError:
    pass

print(f"ok: webhooks verified by client.webhooks.unwrap; {len(received.get('/hooks', []))} deliveries received")
