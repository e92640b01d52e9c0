"""What Ray Serve's proxy in front of the router must carry through: a chunked body over the limit is
a 413, not a reset; an upload's safety headers reach the browser; a client of the OpenAI route that
goes away (a timeout, a closed stream) cancels its job. The validation itself (each bad input a 4xx
naming the field) is tested on the in-memory build: tests/unit/test_router_http.py."""

from __future__ import annotations


import httpx
import pytest

from tests.helpers import wait_status

pytestmark = pytest.mark.serve

MSGS = [{"role": "user", "content": "hello"}]
TERMINAL = {"succeeded", "failed", "cancelled"}


def test_chunked_body_over_the_limit_is_413(orchestrator):
    def body():
        yield b'{"app_id": "echo", "params": {"message": "'
        for _ in range(40):
            yield b"x" * 65536  # 2.5 MB in chunks, no Content-Length; the JSON limit is 1 MiB

    r = httpx.post(f"{orchestrator}/v1/jobs", content=body(), headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and r.json()["error"] == "body_too_large", (r.status_code, r.text)


def test_uploaded_active_content_is_an_attachment_with_nosniff_through_the_proxy(http):
    up = http.post("/v1/artifacts", files={"file": ("page.html", b"<html><script>alert(document.domain)</script></html>")})
    assert up.status_code == 201, up.text
    r = http.get(up.json()["url"])
    assert r.status_code == 200
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-type"].startswith("application/octet-stream")
    assert r.headers["content-disposition"].startswith("attachment")


# -- the OpenAI route ---------------------------------------------------------------------------------

def _chat_job_ids(http) -> set[str]:
    return {j["job_id"] for j in http.get("/v1/jobs", params={"app_id": "chat", "limit": 50}).json()["jobs"]}


def test_openai_client_that_disconnects_cancels_its_job(orchestrator, http):
    from openai import APITimeoutError, OpenAI

    before = _chat_job_ids(http)
    client = OpenAI(base_url=orchestrator + "/v1", api_key="anonymous", timeout=4, max_retries=0)
    with pytest.raises(APITimeoutError):
        client.chat.completions.create(model="chat", messages=MSGS, max_tokens=4000, extra_body={"min_tokens": 4000})
    (job_id,) = _chat_job_ids(http) - before
    assert wait_status(http, job_id, TERMINAL, timeout_s=60)["status"] == "cancelled"


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
    assert wait_status(http, job_id, TERMINAL, timeout_s=60)["status"] == "cancelled"
