"""Drives Flotilla's model gateway with the official OpenAI Python SDK, unchanged: only the base
URL and the key are set. Prints one JSON line per check for the Rust test to assert on."""

import json
import sys

import openai

base_url, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
out = {}

models = client.models.list()
out["models"] = sorted(m.id for m in models.data)

answer = client.chat.completions.create(
    model="gpt-4o",
    messages=[{"role": "user", "content": "Say hello"}],
    max_tokens=20,
)
out["content"] = answer.choices[0].message.content
out["usage"] = [answer.usage.prompt_tokens, answer.usage.completion_tokens]
out["fingerprint"] = answer.system_fingerprint

chunks = []
usage = None
stream = client.chat.completions.create(
    model="claude-sonnet-3.5",
    messages=[{"role": "user", "content": "Stream please"}],
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        chunks.append(chunk.choices[0].delta.content)
    if chunk.usage is not None:
        usage = [chunk.usage.prompt_tokens, chunk.usage.completion_tokens]
out["stream_chunks"] = len(chunks)
out["stream_text"] = "".join(chunks)
out["stream_usage"] = usage

try:
    client.chat.completions.create(model="gpt-7", messages=[{"role": "user", "content": "x"}])
    out["not_found"] = None
except openai.NotFoundError as e:
    out["not_found"] = [e.status_code, e.body.get("code") if isinstance(e.body, dict) else None]

try:
    client.chat.completions.create(model="gpt-4o", messages=[])
    out["bad_request"] = None
except openai.BadRequestError as e:
    out["bad_request"] = [e.status_code, e.body.get("param") if isinstance(e.body, dict) else None]

print(json.dumps(out))
