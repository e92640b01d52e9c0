"""The llm deployment (transformers engine, tiny untrained Llama) through the router, and the
OpenAI-compatible API with the official client."""

from __future__ import annotations

import time

import pytest

from tests.helpers import read_sse, wait_replicas_idle, wait_status

pytestmark = pytest.mark.serve

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]


def test_chat_job_streams_tokens_that_add_up_to_the_text(orchestrator, http):
    r = http.post("/v1/jobs", json={"app_id": "chat", "params": {"messages": MESSAGES, "max_tokens": 12, "seed": 3}})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    events = read_sse(orchestrator, job_id, timeout_s=300)
    tokens = [e["data"]["token"] for e in events if e["event"] == "progress"]
    assert events[-1]["data"]["status"] == "succeeded", events[-1]
    job = wait_status(http, job_id, {"succeeded"})
    assert tokens and "".join(tokens) == job["result"]["text"]
    assert job["result"]["untrained"] is True and job["result"]["engine"] == "transformers"
    # Every generated token but an end-of-sequence one is streamed as a piece of text.
    assert len(tokens) <= job["result"]["completion_tokens"] <= 12 and job["result"]["prompt_tokens"] > 0


def test_openai_client_non_stream_and_stream(orchestrator):
    from openai import OpenAI

    client = OpenAI(base_url=orchestrator + "/v1", api_key="anonymous")
    assert "chat" in [m.id for m in client.models.list().data]
    resp = client.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=8, seed=1)
    assert resp.object == "chat.completion" and resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content and resp.choices[0].finish_reason in ("stop", "length")
    stream = client.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=8, seed=1, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == resp.choices[0].message.content  # same seed, same tokens
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_a_seeded_job_gives_the_same_text_while_another_job_generates(orchestrator, http):
    # The CPU engine samples from torch's process-wide RNG: a generation running beside a seeded
    # one on the same replica must not change its tokens.
    seeded = {"messages": MESSAGES, "max_tokens": 12, "temperature": 1.0, "seed": 11}
    alone = wait_status(http, http.post("/v1/jobs", json={"app_id": "chat", "params": seeded}).json()["job_id"],
                        {"succeeded"}, timeout_s=120)["result"]["text"]
    long = http.post("/v1/jobs", json={"app_id": "chat", "params": {
        "messages": MESSAGES, "max_tokens": 300, "min_tokens": 300, "temperature": 1.0}}).json()["job_id"]
    read_sse(orchestrator, long, until=lambda e: e["data"].get("index") == 5, timeout_s=300)
    beside = http.post("/v1/jobs", json={"app_id": "chat", "params": seeded}).json()["job_id"]
    assert wait_status(http, beside, {"succeeded", "failed"}, timeout_s=120)["result"]["text"] == alone
    assert wait_status(http, long, {"succeeded", "failed"}, timeout_s=120)["status"] == "succeeded"


def test_chat_bad_input_names_the_field(http):
    r = http.post("/v1/jobs", json={"app_id": "chat", "params": {"messages": []}})
    assert r.status_code == 422 and "params.messages" in r.json()["message"]
    # The OpenAI route in OpenAI's shape: 400, `param` the request's own field.
    r = http.post("/v1/chat/completions", json={"model": "chat", "messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages", r.text
    r = http.post("/v1/chat/completions", json={"model": "echo", "messages": MESSAGES})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model" and "echo" in r.json()["error"]["message"]


def test_cancel_stops_generation_between_tokens(orchestrator, http):
    params = {"messages": MESSAGES, "max_tokens": 4000, "min_tokens": 4000, "seed": 5}
    job_id = http.post("/v1/jobs", json={"app_id": "chat", "params": params}).json()["job_id"]
    read_sse(orchestrator, job_id, until=lambda e: e["data"].get("index") == 5, timeout_s=300)
    assert http.delete(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    wait_replicas_idle(http, "llm", since=time.time())
    tokens = [e for e in read_sse(orchestrator, job_id, timeout_s=30) if e["event"] == "progress"]
    assert 6 <= len(tokens) < 4000
    # The replica is free again: a short job runs at once.
    r = http.post("/v1/jobs", json={"app_id": "chat", "params": {"messages": MESSAGES, "max_tokens": 4}})
    assert wait_status(http, r.json()["job_id"], {"succeeded", "failed"}, timeout_s=60)["status"] == "succeeded"
