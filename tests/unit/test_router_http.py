"""The HTTP API on the orchestrator's in-memory build, served by uvicorn in this process over a
stand-in model (tests/memory_router.py): bad input answers a 4xx naming the field, never a 5xx;
artifacts are served safely; uploads and downloads are streamed, and a refused multipart submit
stores nothing; Prefer: wait and long polls answer in one request. Nothing here is about Postgres,
Redis or Ray: those paths are tested in tests/integration (router_harness.py) and tests/serve."""

from __future__ import annotations

import os
import time
import tracemalloc
from pathlib import Path

import httpx
import pytest

from tests.helpers import wait_terminal
from tests.memory_router import http, rr, running_orchestrator  # noqa: F401 (fixtures)


def fields(r: httpx.Response) -> set[str]:
    return {f["field"] for f in r.json().get("fields", [])}


def post_raw(http, body: str, path: str = "/v1/jobs", **headers) -> httpx.Response:
    return http.post(path, content=body.encode(), headers={"content-type": "application/json", **headers})


# -- bad input: 4xx naming the field ---------------------------------------------------------------

def test_huge_integer_param_is_422_naming_it(http):
    r = post_raw(http, '{"app_id": "echo", "params": {"steps": 1' + "0" * 400 + "}}")
    assert r.status_code == 422, r.text
    assert fields(r) == {"params.steps"} and "64 bits" in r.text
    r = post_raw(http, '{"app_id": "echo", "params": {"delay_s": -1' + "0" * 400 + "}}")
    assert r.status_code == 422 and fields(r) == {"params.delay_s"}


@pytest.mark.parametrize("bad", ["\\u0000", "\\ud800", "a\\udfffb"])
def test_nul_and_lone_surrogates_are_422_wherever_they_are(http, bad):
    r = post_raw(http, '{"app_id": "echo", "params": {"message": "x%sy"}}' % bad)
    assert r.status_code == 422, r.text
    assert fields(r) == {"params.message"}
    chat = '{"app_id": "chat", "params": {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "%s"}]}}'
    r = post_raw(http, chat % bad)
    assert r.status_code == 422 and fields(r) == {"params.messages[1].content"}, r.text
    r = post_raw(http, '{"app_id": "ec%sho", "params": {}}' % bad)
    assert r.status_code == 422 and fields(r) == {"app_id"}, r.text
    r = post_raw(http, '{"model": "chat", "messages": [{"role": "user", "content": "%s"}]}' % bad, "/v1/chat/completions")
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content", r.text  # OpenAI's shape
    r = http.get("/v1/jobs", params={"app_id": "a\x00b"})
    assert r.status_code == 422 and fields(r) == {"app_id"}


def test_idempotency_key_header_is_checked(http):
    for key in ["k" * 256, "caf\xe9", "tab\there"]:
        r = http.post("/v1/jobs", json={"app_id": "echo"}, headers={"Idempotency-Key": key.encode("latin-1")})
        assert r.status_code == 422 and fields(r) == {"Idempotency-Key"}, (key, r.text)
    ok = http.post("/v1/jobs", json={"app_id": "echo"}, headers={"Idempotency-Key": "k" * 255})
    again = http.post("/v1/jobs", json={"app_id": "echo"}, headers={"Idempotency-Key": "k" * 255})
    assert ok.status_code == 202 and again.status_code == 200 and again.json()["job_id"] == ok.json()["job_id"]


def test_idempotency_key_reused_with_another_body_is_409(http):
    first = http.post("/v1/jobs", json={"app_id": "echo", "params": {"message": "a"}}, headers={"Idempotency-Key": "k1"})
    assert first.status_code == 202
    r = http.post("/v1/jobs", json={"app_id": "echo", "params": {"message": "b"}}, headers={"Idempotency-Key": "k1"})
    assert r.status_code == 409 and r.json()["error"] == "idempotency_conflict" and fields(r) == {"Idempotency-Key"}, r.text


def test_multipart_priority_has_the_json_range(http):
    for bad in [str(2**31), "101", "-101", "1.5", "high", "\u00b2"]:
        r = http.post("/v1/jobs/multipart", data={"app_id": "echo", "priority": bad})
        assert r.status_code == 422 and fields(r) == {"priority"}, (bad, r.text)
    r = http.post("/v1/jobs", json={"app_id": "echo", "priority": 2**31})
    assert r.status_code == 422 and fields(r) == {"priority"}
    assert http.post("/v1/jobs/multipart", data={"app_id": "echo", "priority": "-100"}).status_code == 202


@pytest.mark.parametrize("bad", ["\u00b2", "1\u00b9", "\u00b3-0", "\u0661\u0662\u0663", "1" * 21, "1" * 23 + "-0", "0-" + "9" * 21,
                                 "18446744073709551616-0", "1-", "-1", "1-2-3", "1 2", "0x10"])
def test_last_event_id_must_be_a_stream_id(http, bad):
    job_id = http.post("/v1/jobs", json={"app_id": "echo"}).json()["job_id"]
    try:  # what a client sends for a character in a header: latin-1 where it can (Starlette decodes so)
        raw = bad.encode("latin-1")
    except UnicodeEncodeError:
        raw = bad.encode("utf-8")
    r = http.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": raw})
    assert r.status_code == 422 and fields(r) == {"Last-Event-ID"}, (bad, r.text)


def test_last_event_id_at_the_uint64_limit_is_accepted(http):
    job_id = http.post("/v1/jobs", json={"app_id": "echo"}).json()["job_id"]
    wait_terminal(http, job_id)
    top = f"{2**64 - 1}-{2**64 - 1}"
    with http.stream("GET", f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": top}) as r:
        assert r.status_code == 200
        body = r.read().decode()
    assert '"succeeded"' in body  # nothing after that id: the terminal status comes from the job row


def test_unknown_and_unrunnable_apps_are_refused_at_submit(http):
    r = http.post("/v1/jobs", json={"app_id": "nope"})
    assert r.status_code == 422 and fields(r) == {"app_id"} and r.json()["error"] == "unknown_app"
    r = http.post("/v1/jobs", json={"app_id": "cloud"})  # kind: replicate, no token for it
    assert r.status_code == 422 and fields(r) == {"app_id"} and r.json()["error"] == "app_not_runnable", r.text
    assert "GPU_ORCH_TEST_UNSET_TOKEN is not set" in r.text
    cloud = http.get("/v1/workers").json()["cloud"]
    assert cloud == [{"backend": "replicate", "available": False, "apps": ["cloud"], "fallback_for": [],
                      "reason": "no Replicate API token ($GPU_ORCH_TEST_UNSET_TOKEN is not set)"}]
    r = http.post("/v1/jobs/multipart", data={"app_id": "cloud"})
    assert r.status_code == 422 and fields(r) == {"app_id"}
    assert http.get("/v1/jobs", params={"app_id": "cloud"}).json()["jobs"] == []


def test_app_whose_model_is_not_deployed_is_refused():
    with running_orchestrator(models=("echo",)) as r:  # no backend for the chat app's llm
        with httpx.Client(base_url=r.base) as c:
            res = c.post("/v1/jobs", json={"app_id": "chat", "params": {"messages": [{"role": "user", "content": "x"}]}})
    assert res.status_code == 422 and res.json()["error"] == "app_not_runnable" and fields(res) == {"app_id"}


# -- body limits -----------------------------------------------------------------------------------

def _chunks(n: int, size: int = 512):
    for _ in range(n // size):
        yield b"x" * size


@pytest.mark.parametrize("path,ctype", [
    ("/v1/jobs", "application/json"),
    ("/v1/artifacts", "multipart/form-data; boundary=zz"),
    ("/v1/jobs/multipart", "multipart/form-data; boundary=zz"),
])
def test_chunked_body_over_the_limit_is_413(rr, path, ctype):
    rr.router.api.state.limits.max_upload_bytes = 8192  # read per request
    prefix = b'--zz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n' if "multipart" in ctype else b"{"

    def body():
        yield prefix
        yield from _chunks(64 * 1024)

    with httpx.Client(base_url=rr.base, timeout=30) as c:
        r = c.post(path, content=body(), headers={"content-type": ctype})
    assert r.status_code == 413, (path, r.status_code, r.text)
    assert r.json()["error"] == "body_too_large"


# -- artifacts: stored XSS, not-found, streaming ---------------------------------------------------

@pytest.mark.parametrize("name,served_type", [
    ("page.html", "application/octet-stream"), ("logo.svg", "application/octet-stream"),
    ("doc.xhtml", "application/octet-stream"), ("feed.xml", "application/octet-stream"),
    ("app.js", "application/octet-stream"), ("blob.weird", "application/octet-stream"),
    ("clip.wav", "audio/x-wav"), ("photo.png", "image/png"),
])
def test_uploads_are_served_as_attachments_with_nosniff(http, name, served_type):
    up = http.post("/v1/artifacts", files={"file": (name, b"<html><script>alert(1)</script></html>")})
    assert up.status_code == 201, up.text
    r = http.get(up.json()["url"])
    assert r.status_code == 200 and r.content.startswith(b"<html>")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-type"].split(";")[0] == served_type
    assert r.headers["content-disposition"].startswith("attachment;")


def test_generated_media_is_inline_and_active_outputs_are_not(rr, http):
    png = rr.router.artifacts.put(b"\x89PNG....", name="image-0.png", prefix="outputs")
    svg = rr.router.artifacts.put(b"<svg onload=alert(1)>", name="x.svg", prefix="outputs")
    r = http.get("/v1/artifacts/" + png[len("artifact://"):])
    assert r.headers["content-type"] == "image/png" and r.headers["content-disposition"].startswith("inline")
    assert r.headers["x-content-type-options"] == "nosniff"
    r = http.get("/v1/artifacts/" + svg[len("artifact://"):])
    assert r.headers["content-type"].startswith("application/octet-stream")
    assert r.headers["content-disposition"].startswith("attachment") and r.headers["x-content-type-options"] == "nosniff"


def test_missing_artifact_is_404_naming_the_key_on_a_local_store(http):
    r = http.get("/v1/artifacts/uploads/0123/none.wav")
    assert r.status_code == 404 and fields(r) == {"key"}


def test_missing_artifact_is_404_on_an_fsspec_store():
    with running_orchestrator(artifacts="memory://gpu-orch-test-arts") as r:
        with httpx.Client(base_url=r.base) as c:
            missing = c.get("/v1/artifacts/outputs/0123/none.png")
            up = c.post("/v1/artifacts", files={"file": ("a.wav", b"RIFF" * 1000)}).json()
            got = c.get(up["url"])
    assert missing.status_code == 404 and fields(missing) == {"key"}, missing.text
    assert got.status_code == 200 and got.content == b"RIFF" * 1000 and got.headers["content-length"] == "4000"


def _count_files(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def test_refused_multipart_submit_stores_no_file(rr, http):
    root = rr.router.artifacts.root
    before = _count_files(root)
    wav = ("a.wav", b"RIFF....WAVE", "audio/wav")
    bad = [
        ({"app_id": "transcribe", "params": '{"language": "' + "x" * 50 + '"}'}, "params.language"),
        ({"app_id": "transcribe", "params": '{"nope": 1}'}, "params.nope"),
        ({"app_id": "transcribe", "params": "{}", "priority": "1000"}, "priority"),
        ({"app_id": "nope"}, "app_id"),
    ]
    for data, field in bad:
        r = http.post("/v1/jobs/multipart", data=data, files={"audio": wav})
        assert r.status_code == 422 and field in fields(r), (data, r.text)
    r = http.post("/v1/jobs/multipart", data={"app_id": "transcribe"}, files={"audio": ("a.txt", b"x", "text/plain")})
    assert r.status_code == 422 and fields(r) == {"params.audio"}
    assert _count_files(root) == before
    ok = http.post("/v1/jobs/multipart", data={"app_id": "transcribe"}, files={"audio": wav}, headers={"Idempotency-Key": "m1"})
    assert ok.status_code == 202, ok.text
    assert _count_files(root) == before + 1
    again = http.post("/v1/jobs/multipart", data={"app_id": "transcribe"}, files={"audio": wav}, headers={"Idempotency-Key": "m1"})
    assert again.status_code == 200 and again.json()["job_id"] == ok.json()["job_id"]
    assert _count_files(root) == before + 1  # the repeat's copy is not kept


def test_uploads_and_downloads_are_streamed_not_held_in_memory(rr, http, tmp_path):
    size = 24 * 1024 * 1024
    src = tmp_path / "big.wav"
    with src.open("wb") as f:
        for _ in range(size // (1024 * 1024)):
            f.write(os.urandom(1024 * 1024))
    tracemalloc.start()
    try:
        with src.open("rb") as f:
            up = http.post("/v1/artifacts", files={"file": ("big.wav", f, "audio/wav")})
        peak_up = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        n = 0
        with http.stream("GET", up.json()["url"]) as r:
            for chunk in r.iter_raw(64 * 1024):
                n += len(chunk)
        peak_down = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert up.status_code == 201 and up.json()["size"] == size and n == size
    # The whole file held at once would be 24 MB (twice that for a copy).
    assert peak_up < 12 * 1024 * 1024, peak_up
    assert peak_down < 8 * 1024 * 1024, peak_down
    assert rr.router.artifacts.local_path(up.json()["artifact"]).read_bytes() == src.read_bytes()


# -- Prefer: wait -----------------------------------------------------------------------------------

def test_prefer_wait_answers_with_the_finished_job(http):
    r = http.post("/v1/jobs", json={"app_id": "echo", "params": {"message": "hi"}}, headers={"Prefer": "wait=10"})
    assert r.status_code == 200 and r.headers["Preference-Applied"] == "wait=10", r.text  # ended: the answer
    job = r.json()
    assert job["status"] == "succeeded" and job["result"]["echo"]["message"] == "hi", job
    assert http.get(f"/v1/jobs/{job['job_id']}").json() == job  # the whole job, as GET shows it


def test_prefer_wait_shorter_than_the_job_answers_with_it_as_it_is(http):
    t0 = time.monotonic()
    r = http.post("/v1/jobs", json={"app_id": "echo", "params": {"delay_s": 4}}, headers={"Prefer": "respond-async, wait=1"})
    waited = time.monotonic() - t0
    assert r.status_code == 202 and 1 <= waited < 3.5, (waited, r.text)
    assert r.json()["status"] in ("queued", "running")
    assert wait_terminal(http, r.json()["job_id"])["status"] == "succeeded"  # it goes on


def test_prefer_wait_replayed_idempotently_is_200_with_the_job(http):
    first = http.post("/v1/jobs", json={"app_id": "echo"}, headers={"Idempotency-Key": "pw-1", "Prefer": "wait=10"})
    again = http.post("/v1/jobs", json={"app_id": "echo"}, headers={"Idempotency-Key": "pw-1", "Prefer": "wait"})
    assert first.status_code == 200 and again.status_code == 200  # ended, both
    assert again.headers["Preference-Applied"] == "wait=60" and again.json() == first.json()


def test_prefer_wait_above_the_maximum_is_capped_not_refused(http):
    r = http.post("/v1/jobs", json={"app_id": "echo"}, headers={"Prefer": "wait=600"})
    assert r.status_code == 200 and r.headers["Preference-Applied"] == "wait=60", r.text
    assert r.json()["status"] == "succeeded"


@pytest.mark.parametrize("bad", ["wait=0", "wait=abc", "wait=1.5", "wait=\u0661", "wait=-5"])
def test_prefer_wait_out_of_range_is_422_naming_the_header_and_accepts_nothing(http, bad):
    before = http.get("/v1/jobs", params={"app_id": "echo", "limit": 500}).json()["jobs"]
    r = http.post("/v1/jobs", json={"app_id": "echo"}, headers={"Prefer": bad.encode()})
    assert r.status_code == 422 and fields(r) == {"Prefer"}, r.text
    assert http.get("/v1/jobs", params={"app_id": "echo", "limit": 500}).json()["jobs"] == before


def test_other_preferences_leave_the_submit_as_it_was(http):
    r = http.post("/v1/jobs", json={"app_id": "echo"}, headers={"Prefer": "respond-async"})
    assert r.status_code == 202 and "Preference-Applied" not in r.headers
    assert set(r.json()) == {"job_id", "status", "route", "route_reason"}


# -- long poll ------------------------------------------------------------------------------------

def test_a_long_poll_answers_when_the_job_ends_in_one_request(http):
    job_id = http.post("/v1/jobs", json={"app_id": "echo", "params": {"delay_s": 1}}).json()["job_id"]
    t0 = time.monotonic()
    r = http.get(f"/v1/jobs/{job_id}", params={"wait": 20})
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    assert time.monotonic() - t0 < 15  # answered at the end, not at the wait's end
    assert http.get(f"/v1/jobs/{job_id}", params={"wait": 20}).json() == r.json()  # ended: at once


def test_a_long_poll_shorter_than_the_job_answers_with_it_as_it_is(http):
    job_id = http.post("/v1/jobs", json={"app_id": "echo", "params": {"delay_s": 5}}).json()["job_id"]
    t0 = time.monotonic()
    r = http.get(f"/v1/jobs/{job_id}", params={"wait": 1})
    assert r.status_code == 200 and r.json()["status"] in ("queued", "running") and 1 <= time.monotonic() - t0 < 4


@pytest.mark.parametrize("bad", ["-1", "abc", "nan"])
def test_a_long_poll_with_a_bad_wait_is_422_naming_it(http, bad):
    job_id = http.post("/v1/jobs", json={"app_id": "echo"}).json()["job_id"]
    r = http.get(f"/v1/jobs/{job_id}", params={"wait": bad})
    assert r.status_code == 422 and fields(r) == {"wait"}, r.text


def test_the_sdk_waits_with_long_polls(rr):
    from gpu_orchestrator.client import Client

    seen = []
    with Client(rr.base) as c:
        c.http.event_hooks["request"].append(lambda req: seen.append((req.method, req.url.path, req.url.query)))
        job_id = c.submit("echo", {"delay_s": 1.5})["job_id"]
        assert c.wait(job_id, timeout=30)["status"] == "succeeded"
    polls = [q for m, path, q in seen if m == "GET" and path == f"/v1/jobs/{job_id}"]
    assert len(polls) == 1 and b"wait=" in polls[0], seen


def test_api_docs_need_no_internet(http):
    page = http.get("/docs")
    assert page.status_code == 200 and "cdn." not in page.text and "https://" not in page.text, page.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/static/swagger-ui/{asset}" in page.text
        r = http.get(f"/static/swagger-ui/{asset}")
        assert r.status_code == 200 and len(r.content) > 100_000
    assert http.get("/openapi.json").json()["paths"]["/v1/jobs"]["post"]


def test_a_cpu_run_is_not_priced_as_a_gpu(http):
    """The demo's models run on CPU (num_gpus 0): the cost says so, not the default GPU type's price."""
    job = wait_terminal(http, http.post("/v1/jobs", json={"app_id": "echo", "params": {"delay_s": 0.1}}).json()["job_id"])
    assert job["status"] == "succeeded" and job["cost"]["usd"] == 0 and job["cost"]["gpu_seconds"] == 0
    assert job["cost"]["usage"]["gpu_type"] == "cpu" and job["cost"]["usage"]["usd_per_gpu_hour"] == 0
