"""The OpenAI-compatible routes on the orchestrator's in-memory build (tests/memory_router.py) with
the official openai client: retries of one request land on one job, a client that goes away cancels
its job, and a non-stream wait ends before the client's timeout; images, transcriptions and
completions answer as the client expects."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.helpers import wait_status
from tests.memory_router import http, rr  # noqa: F401 (fixtures)

MSGS = [{"role": "user", "content": "hello"}]


def client(rr, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=rr.base + "/v1", api_key="anonymous", **kw)


def chat_jobs(http) -> list[dict]:
    return http.get("/v1/jobs", params={"app_id": "chat"}).json()["jobs"]



def test_same_idempotency_key_is_one_job(rr, http):
    c = client(rr)
    a = c.chat.completions.create(model="chat", messages=MSGS, max_tokens=4, extra_headers={"Idempotency-Key": "req-1"})
    b = c.chat.completions.create(model="chat", messages=MSGS, max_tokens=4, extra_headers={"Idempotency-Key": "req-1"})
    assert a.id == b.id and a.choices[0].message.content == "t0 t1 t2 t3 "
    assert len(chat_jobs(http)) == 1 and len(rr.model.calls) == 1
    with pytest.raises(openai.ConflictError):  # the same key for another request
        c.with_options(max_retries=0).chat.completions.create(model="chat", messages=MSGS, max_tokens=5,
                                                              extra_headers={"Idempotency-Key": "req-1"})


def test_sdk_retries_after_a_bounded_wait_rejoin_the_same_job(rr, http):
    # 12 s client timeout: the router answers "still running" (retryable) after 7 s, and the SDK's
    # retry (no Idempotency-Key; x-stainless-retry-count: 1) waits for the same job.
    c = client(rr, timeout=12, max_retries=2)
    t0 = time.monotonic()
    resp = c.chat.completions.create(model="chat", messages=MSGS, max_tokens=200, extra_body={"min_tokens": 200})
    took = time.monotonic() - t0
    assert resp.choices[0].message.content.count("t") == 200 and resp.choices[0].finish_reason == "length"
    assert took > 7, took  # it did go through a retry
    jobs = chat_jobs(http)
    assert len(jobs) == 1 and jobs[0]["status"] == "succeeded" and len(rr.model.calls) == 1


def test_the_same_body_from_a_new_request_is_a_new_job(rr, http):
    c = client(rr)
    a = c.chat.completions.create(model="chat", messages=MSGS, max_tokens=3)
    b = c.chat.completions.create(model="chat", messages=MSGS, max_tokens=3)
    assert a.id != b.id and len(chat_jobs(http)) == 2


def test_non_stream_client_that_disconnects_cancels_its_job(rr, http):
    c = client(rr, timeout=2, max_retries=0)
    with pytest.raises(openai.APITimeoutError):
        c.chat.completions.create(model="chat", messages=MSGS, max_tokens=400, extra_body={"min_tokens": 400})
    (job,) = chat_jobs(http)
    assert wait_status(http, job["job_id"], {"cancelled", "succeeded", "failed"})["status"] == "cancelled"
    deadline = time.monotonic() + 5
    while job["job_id"] not in rr.model.cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job["job_id"] in rr.model.cancelled  # the generation itself stopped


def test_stream_client_that_goes_away_cancels_its_job(rr, http):
    c = client(rr)
    stream = c.chat.completions.create(model="chat", messages=MSGS, max_tokens=400, extra_body={"min_tokens": 400},
                                       stream=True)
    got = [next(stream) for _ in range(4)]
    stream.close()
    assert got[1].choices[0].delta.content == "t0 "
    (job,) = chat_jobs(http)
    assert wait_status(http, job["job_id"], {"cancelled", "succeeded", "failed"})["status"] == "cancelled"


def test_finished_stream_does_not_cancel(rr, http):
    c = client(rr)
    text = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        model="chat", messages=MSGS, max_tokens=3, stream=True))
    assert text == "t0 t1 t2 "
    (job,) = chat_jobs(http)
    time.sleep(0.3)
    assert http.get(f"/v1/jobs/{job['job_id']}").json()["status"] == "succeeded"


def test_wait_bound_follows_the_client_read_timeout():
    from gpu_orchestrator.api.openai_format import WAIT_CAP_S, wait_bound_s

    assert wait_bound_s(600, None) == WAIT_CAP_S < 600  # under the SDK's 600 s default
    assert wait_bound_s(600, "600") == WAIT_CAP_S
    assert wait_bound_s(600, "60") == 55
    assert wait_bound_s(20, None) == 50
    assert wait_bound_s(600, "3") == WAIT_CAP_S  # too short to answer in time: disconnect semantics
    assert wait_bound_s(600, "nan") == WAIT_CAP_S and wait_bound_s(600, "x") == WAIT_CAP_S


def test_still_running_answer_is_retryable(rr, http):
    with httpx.Client(base_url=rr.base, timeout=30) as c:
        r = c.post("/v1/chat/completions", json={"model": "chat", "messages": MSGS, "max_tokens": 300, "min_tokens": 300},
                   headers={"x-stainless-read-timeout": "11", "Idempotency-Key": "slow-1"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "still_running", r.text
        assert r.headers["x-should-retry"] == "true" and r.headers["retry-after"] == "1"
        (job,) = chat_jobs(http)
        assert job["status"] == "running"  # the server ended the wait, not the client: the job goes on
        again = c.post("/v1/chat/completions", json={"model": "chat", "messages": MSGS, "max_tokens": 300, "min_tokens": 300},
                       headers={"Idempotency-Key": "slow-1"})
        assert again.status_code == 200 and again.json()["id"] == f"chatcmpl-{job['job_id']}"


def test_errors_reach_the_openai_client_with_their_message_and_field(rr, http):
    c = client(rr, max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:  # OpenAI's 400 for a bad parameter, not our 422
        c.chat.completions.create(model="chat", messages=MSGS, max_tokens=99999)
    assert e.value.status_code == 400 and e.value.param == "max_tokens" and e.value.type == "invalid_request_error"
    assert "max_tokens" in e.value.message and "4096" in e.value.message
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="no-such-model", messages=MSGS)
    assert e.value.code == "model_not_found" and e.value.param == "model" and "no-such-model" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:  # the request's own schema
        c.chat.completions.create(model="chat", messages=MSGS, max_tokens="many")  # type: ignore[arg-type]
    assert e.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:  # no messages: the app's parameters say it is required
        c.chat.completions.create(model="chat", messages=[])
    assert e.value.param == "messages"
    assert chat_jobs(http) == []  # nothing was accepted
    # The job API keeps its own shape.
    r = http.post("/v1/jobs", json={"app_id": "chat", "params": {"messages": MSGS, "max_tokens": 99999}})
    assert r.status_code == 422 and r.json()["error"] == "invalid_params"
    assert r.json()["fields"][0]["field"] == "params.max_tokens"


def test_a_body_over_the_limit_is_an_openai_413(rr):
    with pytest.raises(openai.APIStatusError) as e:
        client(rr, max_retries=0).chat.completions.create(model="chat", messages=[{"role": "user", "content": "x" * 8000}])
    assert e.value.status_code == 413 and e.value.code == "body_too_large" and "4096 bytes" in e.value.message


def jobs_of(http, app_id: str) -> list[dict]:
    return http.get("/v1/jobs", params={"app_id": app_id}).json()["jobs"]


def test_models_lists_every_served_app_by_id_and_alias(rr):
    c = client(rr)
    by_id = {m.id: m for m in c.models.list().data}
    assert {"chat", "image", "dall-e-3", "transcribe", "whisper-1"} <= set(by_id) and "echo" not in by_id  # echo: no task
    whisper = c.models.retrieve("whisper-1")
    assert whisper.id == "whisper-1" and whisper.model_extra["app_id"] == "transcribe"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-9")


def test_images_generate_through_the_official_client(rr, http):
    import base64
    import io

    from PIL import Image

    c = client(rr, max_retries=0)
    b64 = c.images.generate(model="dall-e-3", prompt="a red fox", n=2, size="128x64", response_format="b64_json")
    imgs = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in b64.data]
    assert [i.size for i in imgs] == [(128, 64), (128, 64)]
    by_url = c.images.generate(model="image", prompt="a red fox", size="64x64")
    (d,) = by_url.data
    assert d.url.startswith(rr.base + "/v1/artifacts/") and Image.open(io.BytesIO(http.get(d.url).content)).size == (64, 64)
    (j1, j2) = sorted(jobs_of(http, "image"), key=lambda j: j["created_at"])
    assert j1["params"]["num_images"] == 2 and j1["params"]["width"] == 128 and j2["status"] == "succeeded"
    for kw, param in (({"size": "huge"}, "size"), ({"n": 9}, "n"), ({"size": "100x64"}, "size"), ({"model": "chat"}, "model")):
        with pytest.raises((openai.BadRequestError, openai.NotFoundError)) as e:
            c.images.generate(**{"model": "image", "prompt": "x", **kw})
        assert e.value.param == param, (kw, e.value.message)
    assert len(jobs_of(http, "image")) == 2  # the refused requests left nothing


WAV = b"RIFF" + b"\0" * 40  # the stand-in model does not decode it


def test_transcriptions_in_every_response_format(rr, http):
    c = client(rr, max_retries=0)
    t = c.audio.transcriptions.create(model="whisper-1", file=("a.wav", WAV))
    assert t.text == " hello world"
    assert c.audio.transcriptions.create(model="transcribe", file=("a.wav", WAV), response_format="text") == "hello world\n"
    srt = c.audio.transcriptions.create(model="whisper-1", file=("a.wav", WAV), response_format="srt")
    assert srt == "1\n00:00:00,000 --> 00:00:01,500\nhello\n\n2\n00:00:01,500 --> 00:00:03,250\nworld\n"
    vtt = c.audio.transcriptions.create(model="whisper-1", file=("a.wav", WAV), response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nhello\n")
    v = c.audio.transcriptions.create(model="whisper-1", file=("a.wav", WAV), response_format="verbose_json", language="de")
    assert v.language == "de" and v.duration == 3.25 and [s.text for s in v.segments] == [" hello", " world"]
    tr = c.audio.translations.create(model="whisper-1", file=("a.wav", WAV))
    assert tr.text == " hello world"
    jobs = jobs_of(http, "transcribe")
    assert len(jobs) == 6 and sorted(j["params"]["task"] for j in jobs) == ["transcribe"] * 5 + ["translate"]
    with pytest.raises(openai.BadRequestError) as e:
        c.audio.transcriptions.create(model="whisper-1", file=("a.wav", WAV), response_format="mp3")  # type: ignore[arg-type]
    assert e.value.param == "response_format"
    with pytest.raises(openai.BadRequestError) as e:  # the app's own check of the file, named as OpenAI names it
        c.audio.transcriptions.create(model="whisper-1", file=("a.exe", WAV))
    assert e.value.param == "file" and ".wav" in e.value.message
    with pytest.raises(openai.NotFoundError):
        c.audio.transcriptions.create(model="dall-e-3", file=("a.wav", WAV))
    assert len(jobs_of(http, "transcribe")) == 6


def test_an_sdk_retry_of_an_upload_rejoins_its_job(rr, http):
    files = {"file": ("a.wav", WAV)}
    first = httpx.post(rr.base + "/v1/audio/transcriptions", data={"model": "whisper-1"}, files=files, timeout=30)
    again = httpx.post(rr.base + "/v1/audio/transcriptions", data={"model": "whisper-1"}, files=files, timeout=30,
                       headers={"x-stainless-retry-count": "1"})
    assert first.status_code == again.status_code == 200 and len(jobs_of(http, "transcribe")) == 1


def test_completions_answer_the_prompt_streamed_or_not(rr, http):
    c = client(rr, max_retries=0)
    r = c.completions.create(model="chat", prompt="Say hi", max_tokens=3)
    assert r.object == "text_completion" and r.choices[0].text == "t0 t1 t2 " and r.usage.completion_tokens == 3
    parts = list(c.completions.create(model="chat", prompt=["Say hi"], max_tokens=2, stream=True))
    assert "".join(p.choices[0].text for p in parts) == "t0 t1 " and parts[-1].choices[0].finish_reason == "length"
    (job, _) = sorted(chat_jobs(http), key=lambda j: j["created_at"])
    assert job["params"]["messages"] == [{"role": "user", "content": "Say hi"}]
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="chat", prompt=["a", "b"])
    assert e.value.param == "prompt"


def test_audio_uploads_take_the_upload_limit_not_the_json_one(rr, http):
    big = WAV + b"\0" * 20_000  # over this router's 4096-byte body limit, under its upload limit
    t = client(rr, max_retries=0).audio.transcriptions.create(model="whisper-1", file=("long.wav", big))
    assert t.text == " hello world"

