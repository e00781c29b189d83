"""The official openai client against a running platform: a chat completion
(not streamed) and a text completion. Env: OPENAI_BASE_URL, OPENAI_API_KEY."""
import openai

client = openai.OpenAI()
resp = client.chat.completions.create(
    model="smollm2-135m-instruct",
    messages=[{"role": "user", "content": "Name a colour."}],
    max_tokens=12,
    temperature=0,
)
choice = resp.choices[0]
assert choice.message.role == "assistant"
assert choice.message.content, "empty content"
assert choice.finish_reason in ("stop", "length"), choice.finish_reason
assert resp.usage.completion_tokens <= 12

stream = client.chat.completions.create(
    model="smollm2-135m-instruct",
    messages=[{"role": "user", "content": "Name a colour."}],
    max_tokens=12,
    temperature=0,
    stream=True,
)
streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
assert streamed == choice.message.content, (streamed, choice.message.content)

text = client.completions.create(model="smollm2-135m-instruct", prompt="Once upon a time", max_tokens=5, temperature=0)
assert text.choices[0].text

lp = client.chat.completions.create(
    model="smollm2-135m-instruct",
    messages=[{"role": "user", "content": "Name a colour."}],
    max_tokens=4,
    temperature=0,
    logprobs=True,
    top_logprobs=2,
)
entries = lp.choices[0].logprobs.content
assert len(entries) == lp.usage.completion_tokens, entries
assert all(e.logprob <= 0 and len(e.top_logprobs) == 2 and e.bytes for e in entries), entries
clp = client.completions.create(model="smollm2-135m-instruct", prompt="Once upon a time", max_tokens=3, temperature=0, logprobs=1)
assert len(clp.choices[0].logprobs.tokens) == clp.usage.completion_tokens
assert clp.choices[0].logprobs.text_offset[0] == 0
print(f"ok: chat {choice.message.content!r} ({choice.finish_reason}), the same streamed; completion {text.choices[0].text!r}")
