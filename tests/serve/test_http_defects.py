"""Issue 8, section 4, on the running stack (Ray Serve's proxy in front of the router): each bad input
is a 4xx naming the field, never a 5xx; artifacts are served without stored XSS; the OpenAI
route keeps one job per request and cancels the job of a client that goes away."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from tests.helpers import wait_status
from tests.ray_session import TINY_DIR

pytestmark = pytest.mark.serve

MSGS = [{"role": "user", "content": "hello"}]
TERMINAL = {"succeeded", "failed", "cancelled"}


def fields(r: httpx.Response) -> set[str]:
    return {f["field"] for f in r.json().get("fields", [])}


def post_json(http, body: str, path: str = "/v1/jobs", headers: dict | None = None) -> httpx.Response:
    return http.post(path, content=body.encode(), headers={"content-type": "application/json", **(headers or {})})


def test_huge_integer_param_is_422(http):
    r = post_json(http, '{"app_id": "echo", "params": {"steps": 1' + "0" * 400 + "}}")
    assert r.status_code == 422 and fields(r) == {"params.steps"}, r.text


@pytest.mark.parametrize("bad", ["\\u0000", "\\ud800"])
def test_nul_and_lone_surrogate_strings_are_422(http, bad):
    r = post_json(http, '{"app_id": "echo", "params": {"message": "a%sb"}}' % bad)
    assert r.status_code == 422 and fields(r) == {"params.message"}, r.text
    r = post_json(http, '{"app_id": "chat", "params": {"messages": [{"role": "user", "content": "%s"}]}}' % bad)
    assert r.status_code == 422 and fields(r) == {"params.messages[0].content"}, r.text
    r = post_json(http, '{"model": "chat", "messages": [{"role": "user", "content": "%s"}]}' % bad, "/v1/chat/completions")
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content", r.text  # OpenAI's
    r = post_json(http, '{"app_id": "e%scho"}' % bad)
    assert r.status_code == 422 and fields(r) == {"app_id"}, r.text


def test_multipart_priority_out_of_range_is_422(http):
    r = http.post("/v1/jobs/multipart", data={"app_id": "echo", "priority": str(2**31)})
    assert r.status_code == 422 and fields(r) == {"priority"}, r.text


@pytest.mark.parametrize("bad", [b"\xb2", b"1\xb9", "١٢٣".encode(), b"1" * 23, b"1" * 23 + b"-0", b"18446744073709551616-0"])
def test_bad_last_event_id_is_422(http, bad):
    job_id = http.post("/v1/jobs", json={"app_id": "echo"}).json()["job_id"]
    r = http.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": bad})
    assert r.status_code == 422 and fields(r) == {"Last-Event-ID"}, (bad, r.status_code, r.text)


def test_idempotency_key_is_checked_and_a_reuse_with_another_body_is_409(http):
    r = http.post("/v1/jobs", json={"app_id": "echo"}, headers={"Idempotency-Key": "k" * 256})
    assert r.status_code == 422 and fields(r) == {"Idempotency-Key"}
    key = f"defects-{uuid.uuid4()}"
    assert http.post("/v1/jobs", json={"app_id": "echo", "params": {"message": "a"}}, headers={"Idempotency-Key": key}).status_code == 202
    r = http.post("/v1/jobs", json={"app_id": "echo", "params": {"message": "b"}}, headers={"Idempotency-Key": key})
    assert r.status_code == 409 and r.json()["error"] == "idempotency_conflict" and fields(r) == {"Idempotency-Key"}


def test_missing_artifact_is_404_naming_the_key(http):
    r = http.get("/v1/artifacts/outputs/0123456789/none.png")
    assert r.status_code == 404 and fields(r) == {"key"}, r.text


def test_chunked_body_over_the_limit_is_413(orchestrator):
    def body():
        yield b'{"app_id": "echo", "params": {"message": "'
        for _ in range(40):
            yield b"x" * 65536  # 2.5 MB in chunks, no Content-Length; the JSON limit is 1 MiB

    r = httpx.post(f"{orchestrator}/v1/jobs", content=body(), headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and r.json()["error"] == "body_too_large", (r.status_code, r.text)


def test_refused_multipart_submit_stores_no_file(http):
    root = Path(TINY_DIR) / "artifacts" / "uploads"
    before = sum(1 for p in root.rglob("*") if p.is_file()) if root.exists() else 0
    r = http.post("/v1/jobs/multipart", data={"app_id": "transcribe", "params": '{"language": "' + "x" * 40 + '"}'},
                  files={"audio": ("a.wav", b"RIFF....WAVE", "audio/wav")})
    assert r.status_code == 422 and fields(r) == {"params.language"}, r.text
    after = sum(1 for p in root.rglob("*") if p.is_file()) if root.exists() else 0
    assert after == before


@pytest.mark.parametrize("name", ["page.html", "logo.svg", "page.xhtml", "x.xml", "app.js"])
def test_uploaded_active_content_is_an_attachment_with_nosniff(http, name):
    up = http.post("/v1/artifacts", files={"file": (name, b"<html><script>alert(document.domain)</script></html>")})
    assert up.status_code == 201, up.text
    r = http.get(up.json()["url"])
    assert r.status_code == 200
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-type"].startswith("application/octet-stream")
    assert r.headers["content-disposition"].startswith("attachment")


# -- the OpenAI route ---------------------------------------------------------------------------------

def _chat_job_ids(http) -> set[str]:
    return {j["job_id"] for j in http.get("/v1/jobs", params={"app_id": "chat", "limit": 50}).json()["jobs"]}


def test_openai_same_idempotency_key_is_one_job(orchestrator, http):
    from openai import OpenAI

    client = OpenAI(base_url=orchestrator + "/v1", api_key="anonymous")
    key = f"oai-{uuid.uuid4()}"
    a = client.chat.completions.create(model="chat", messages=MSGS, max_tokens=4, seed=1, extra_headers={"Idempotency-Key": key})
    b = client.chat.completions.create(model="chat", messages=MSGS, max_tokens=4, seed=1, extra_headers={"Idempotency-Key": key})
    assert a.id == b.id and a.choices[0].message.content == b.choices[0].message.content


def test_openai_client_that_disconnects_cancels_its_job(orchestrator, http):
    from openai import APITimeoutError, OpenAI

    before = _chat_job_ids(http)
    client = OpenAI(base_url=orchestrator + "/v1", api_key="anonymous", timeout=4, max_retries=0)
    with pytest.raises(APITimeoutError):
        client.chat.completions.create(model="chat", messages=MSGS, max_tokens=4000, extra_body={"min_tokens": 4000})
    (job_id,) = _chat_job_ids(http) - before
    assert wait_status(http, job_id, TERMINAL, timeout_s=30)["status"] == "cancelled"


def test_openai_stream_that_goes_away_cancels_its_job(orchestrator, http):
    from openai import OpenAI

    before = _chat_job_ids(http)
    client = OpenAI(base_url=orchestrator + "/v1", api_key="anonymous", max_retries=0)
    stream = client.chat.completions.create(model="chat", messages=MSGS, max_tokens=4000, stream=True,
                                            extra_body={"min_tokens": 4000})
    for _ in range(3):
        next(stream)
    stream.close()
    (job_id,) = _chat_job_ids(http) - before
    assert wait_status(http, job_id, TERMINAL, timeout_s=30)["status"] == "cancelled"
