"""The loopback cloud fakes, driven through the official clients: FakeReplicate through
replicate==1.0.7's Client (its paths, JSON parsing, retries and error mapping), FakeModalEndpoint
through httpx with and without Modal's proxy auth headers."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import replicate
from replicate.exceptions import ReplicateError

from tests.fakes.cloud import Behaviour, FakeModalEndpoint, FakeReplicate, png_of_size

VERSION = "8099696689d249cf8b122d833c36ac3f75505c666a395ca40ef26f68e7d3d16e"


@pytest.fixture(scope="module")
def server():
    with FakeReplicate() as fake:
        yield fake


@pytest.fixture
def fake(server):
    server.reset()
    return server


def client_for(fake: FakeReplicate, token: str | None = None) -> replicate.Client:
    c = replicate.Client(api_token=token or fake.token, base_url=fake.base_url)
    c.poll_interval = 0.0
    return c


def until_done(c: replicate.Client, pid: str, limit: int = 20):
    for _ in range(limit):
        p = c.predictions.get(pid)
        if p.status in ("succeeded", "failed", "canceled"):
            return p
    raise AssertionError(f"{pid} still {p.status}")


def test_model_route_polls_then_succeeds(fake):
    fake.behaviours["stability-ai/sdxl"] = Behaviour(polls=2, output=["a.png"], metrics={"images": 1})
    c = client_for(fake)
    p = c.predictions.create(model="stability-ai/sdxl", input={"prompt": "a fox"})
    assert p.status == "starting" and p.model == "stability-ai/sdxl" and len(p.version) == 64
    assert p.urls["get"].endswith(f"/v1/predictions/{p.id}")
    assert [c.predictions.get(p.id).status for _ in range(2)] == ["processing", "processing"]
    done = c.predictions.get(p.id)
    assert done.status == "succeeded" and done.output == ["a.png"]
    assert done.metrics == {"predict_time": 1.5, "images": 1} and done.completed_at
    assert fake.creates == [{"id": p.id, "key": "stability-ai/sdxl", "input": {"prompt": "a fox"},
                             "path": "/v1/models/stability-ai/sdxl/predictions"}]
    assert fake.requests[0]["headers"]["authorization"] == f"Bearer {fake.token}"
    assert fake.predictions[p.id]["status"] == "succeeded"


def test_version_and_deployment_routes_and_callable_output(fake):
    fake.behaviours[VERSION] = Behaviour(polls=0, output=lambda inp, f: {"transcription": inp["audio"]})
    fake.behaviours["deployments/acme/sdxl"] = Behaviour(
        polls=0, output=lambda inp, f: [f.put_file("o.png", png_of_size(8, 4), "image/png")])
    c = client_for(fake)
    v = c.predictions.create(version=VERSION, input={"audio": "x.wav"})
    assert v.version == VERSION
    assert until_done(c, v.id).output == {"transcription": "x.wav"}
    d = c.predictions.create(deployment="acme/sdxl", input={"prompt": "p"})
    out = until_done(c, d.id).output
    assert out == [fake.file_url("o.png")] and fake.creates[-1]["path"] == "/v1/deployments/acme/sdxl/predictions"
    r = httpx.get(out[0])  # files need no token, like the delivery host
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_failed_prediction_and_wait_raises_nothing_but_run_does(fake):
    fake.behaviours["acme/broken"] = Behaviour(polls=1, error="CUDA out of memory")
    c = client_for(fake)
    p = c.predictions.create(model="acme/broken", input={})
    p.wait()  # the client's own polling loop (poll_interval 0)
    assert p.status == "failed" and p.error == "CUDA out of memory" and p.output is None
    with pytest.raises(replicate.exceptions.ModelError, match="CUDA out of memory"):
        c.run("acme/broken", input={})


def test_429_on_create_is_not_retried_by_the_client(fake):
    fake.behaviours["stability-ai/sdxl"] = Behaviour(create_status=[429])
    c = client_for(fake)
    with pytest.raises(ReplicateError) as ei:
        c.predictions.create(model="stability-ai/sdxl", input={"prompt": "x"})
    assert ei.value.status == 429 and ei.value.title == "Too many requests"
    assert [r["method"] for r in fake.requests] == ["POST"] and fake.creates == []
    assert c.predictions.create(model="stability-ai/sdxl", input={"prompt": "x"}).status == "starting"


def test_503_and_429_on_get_are_retried_by_the_client(fake):
    fake.behaviours["stability-ai/sdxl"] = Behaviour(polls=0, get_status=[503, 429, 503])
    c = client_for(fake)
    p = c.predictions.create(model="stability-ai/sdxl", input={})
    assert c.predictions.get(p.id).status == "succeeded"  # one call, four HTTP GETs
    assert [r["method"] for r in fake.requests] == ["POST", "GET", "GET", "GET", "GET"]


def test_cancel_and_hang(fake):
    fake.behaviours["acme/slow"] = Behaviour(hang=True)
    c = client_for(fake)
    p = c.predictions.create(model="acme/slow", input={})
    assert {c.predictions.get(p.id).status for _ in range(5)} == {"processing"}
    assert c.predictions.cancel(p.id).status == "canceled"
    assert c.predictions.get(p.id).status == "canceled" and fake.cancels == [p.id]
    with pytest.raises(ReplicateError) as ei:
        c.predictions.get("nosuchid")
    assert ei.value.status == 404


def test_wrong_token_is_401(fake):
    c = client_for(fake, token="r8_wrong")
    with pytest.raises(ReplicateError) as ei:
        c.predictions.create(model="stability-ai/sdxl", input={})
    assert ei.value.status == 401 and ei.value.detail == "You did not pass a valid authentication token"
    r = httpx.get(f"{fake.base_url}/v1/predictions/x", headers={"Authorization": f"Token {fake.token}"})
    assert r.status_code == 404  # the "Token" scheme is accepted too


def test_async_methods(fake):
    fake.behaviours["meta/llama"] = Behaviour(polls=1, output=["Hel", "lo"],
                                              metrics={"input_token_count": 5, "output_token_count": 2})
    fake.behaviours["acme/slow"] = Behaviour(hang=True)

    async def go():
        c = client_for(fake)
        p = await c.predictions.async_create(model="meta/llama", input={"prompt": "hi"})
        states = [(await c.predictions.async_get(p.id)).status for _ in range(2)]
        slow = await c.predictions.async_create(deployment="acme/slow", input={})
        canceled = await c.predictions.async_cancel(slow.id)
        done = await c.predictions.async_get(p.id)
        return states, done, canceled

    states, done, canceled = asyncio.run(go())
    assert states == ["processing", "succeeded"] and done.output == ["Hel", "lo"]
    assert done.metrics["output_token_count"] == 2 and canceled.status == "canceled"


def test_modal_endpoint_proxy_auth():
    with FakeModalEndpoint() as m:
        url = m.url
        assert url.endswith("/run")
        ok = httpx.post(url, json={"prompt": "x"}, headers={"Modal-Key": "wk-fake", "Modal-Secret": "ws-fake"})
        assert ok.status_code == 200 and ok.json() == {"output": {"prompt": "x"}}
        missing = httpx.post(url, json={"prompt": "x"})
        assert missing.status_code == 401 and "missing credentials" in missing.text
        wrong = httpx.post(url, json={}, headers={"Modal-Key": "wk-fake", "Modal-Secret": "nope"})
        assert wrong.status_code == 401
        m.handler = lambda body: (503, {"detail": "cold"})
        busy = httpx.post(url, json={}, headers={"Modal-Key": "wk-fake", "Modal-Secret": "ws-fake"})
        assert busy.status_code == 503 and busy.json() == {"detail": "cold"}
        assert [r["path"] for r in m.requests] == ["/run"] * 4
        assert m.requests[0]["headers"]["modal-key"] == "wk-fake" and m.requests[0]["body"] == '{"prompt":"x"}'
