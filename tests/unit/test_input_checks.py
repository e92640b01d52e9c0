"""Pure checks of user input and of what the router sends back: no server, no database."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.testclient import TestClient

from gpu_orchestrator.api.errors import ApiError, BodyLimit, check_idempotency_key, check_last_event_id, install
from gpu_orchestrator.store.artifacts import serve_headers
from gpu_orchestrator.core.apps import AppSpec, ParamsInvalid, check_text, text_problem, validate_params

APP = AppSpec(id="a", deployment="m", parameters=[
    {"name": "n", "type": "integer"}, {"name": "x", "type": "number"}, {"name": "s", "type": "string"},
    {"name": "e", "type": "enum", "choices": ["p", "q"]}, {"name": "messages", "type": "messages"},
])


def bad_fields(params) -> dict[str, str]:
    with pytest.raises(ParamsInvalid) as e:
        validate_params(APP, params)
    return {err.field: err.message for err in e.value.errors}


def test_huge_numbers_are_out_of_range_not_overflow():
    huge = 10**400
    assert "64 bits" in bad_fields({"n": huge})["params.n"]
    assert "64 bits" in bad_fields({"n": -huge})["params.n"]
    assert "64 bits" in bad_fields({"x": huge})["params.x"]
    assert "64 bits" in bad_fields({"n": 2**63})["params.n"]
    assert "64 bits" in bad_fields({"n": 1e300})["params.n"]  # integral float, but no int64
    assert "params.n" in bad_fields({"n": "1" + "0" * 400})  # a numeric string: inf
    assert validate_params(APP, {"n": 2**63 - 1, "x": -(2**63)}) == {"n": 2**63 - 1, "x": float(-(2**63))}
    assert len(bad_fields({"n": huge})["params.n"]) < 120  # the number is not echoed in full


@pytest.mark.parametrize("bad", ["\x00", "\ud800", "\udfff", "ok\udc80ok"])
def test_unstorable_strings_are_refused_with_their_path(bad):
    assert set(bad_fields({"s": bad})) == {"params.s"}
    msgs = [{"role": "user", "content": "fine"}, {"role": "assistant", "content": f"x{bad}"}]
    assert set(bad_fields({"messages": msgs})) == {"params.messages[1].content"}
    assert set(bad_fields({"messages": [{"role": bad, "content": "x"}]})) == {"params.messages[0].role"}
    assert set(bad_fields({"e": bad})) == {"params.e"}
    assert text_problem("fine \U0001F600 \u00e9") is None  # astral characters and accents are fine


def test_check_text_walks_nested_values_and_keys():
    errs = check_text("params.p", {"a": ["ok", {"b": "\x00"}], "k\x00": 1})
    assert {e.field for e in errs} == {"params.p.a[1].b", "params.p"}


@pytest.mark.parametrize("value,ok", [
    (None, "0-0"), ("", "0-0"), ("0-0", "0-0"), ("1732690000000-3", "1732690000000-3"), ("17", "17"),
    (f"{2**64 - 1}-{2**64 - 1}", f"{2**64 - 1}-{2**64 - 1}"),
])
def test_last_event_id_accepted(value, ok):
    assert check_last_event_id(value) == ok


@pytest.mark.parametrize("value", ["\u00b2", "\u0661", "1\u00b2", "\uff11", "1" * 21, "0-" + "1" * 21, f"{2**64}-0",
                                   f"0-{2**64}", "1-", "-1", "a-b", "1-2-3", "1 ", "+1"])
def test_last_event_id_refused(value):
    with pytest.raises(ApiError) as e:
        check_last_event_id(value)
    assert e.value.status == 422 and e.value.field == "Last-Event-ID"


@pytest.mark.parametrize("key,ok", [("a", True), ("k" * 255, True), ("with space-and_punct.!~", True),
                                    ("k" * 256, False), ("", False), ("caf\xe9", False), ("a\x00", False),
                                    ("tab\t", False), ("\ud800", False)])
def test_idempotency_key(key, ok):
    if ok:
        assert check_idempotency_key(key) == key
    else:
        with pytest.raises(ApiError) as e:
            check_idempotency_key(key)
        assert e.value.status == 422 and e.value.field == "Idempotency-Key"


@pytest.mark.parametrize("key,guessed,ctype,disposition", [
    ("outputs/1/image-0.png", "image/png", "image/png", "inline"),
    ("outputs/1/a.wav", "audio/x-wav", "audio/x-wav", "inline"),
    ("outputs/1/a.flac", "audio/flac", "audio/flac", "inline"),
    ("uploads/1/a.png", "image/png", "image/png", "attachment"),
    ("uploads/1/a.html", "text/html", "application/octet-stream", "attachment"),
    ("outputs/1/a.html", "text/html", "application/octet-stream", "attachment"),
    ("outputs/1/a.svg", "image/svg+xml", "application/octet-stream", "attachment"),
    ("outputs/1/a.xhtml", "application/xhtml+xml", "application/octet-stream", "attachment"),
    ("outputs/1/a.xml", "text/xml", "application/octet-stream", "attachment"),
    ("outputs/1/a.js", "text/javascript", "application/octet-stream", "attachment"),
    ("outputs/1/a.bin", "application/octet-stream", "application/octet-stream", "attachment"),
    ("outputs/1/a.txt", "text/plain", "text/plain", "attachment"),
])
def test_artifact_serving_headers(key, guessed, ctype, disposition):
    got_type, headers = serve_headers(key, guessed)
    assert got_type == ctype
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Disposition"].split(";")[0] == disposition
    assert headers["Content-Disposition"].endswith(f'filename="{key.rsplit("/", 1)[-1]}"')


# -- BodyLimit on a tiny app -------------------------------------------------------------------------

def _tiny_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(BodyLimit, limit=1024, upload_limit=4096, upload_paths=("/upload",))
    install(app)

    @app.post("/json")
    async def json_route(body: dict) -> dict:
        return {"keys": len(body)}

    @app.post("/upload")
    async def upload(file: UploadFile = File(...)) -> dict:
        return {"size": len(await file.read())}

    @app.post("/raw")
    async def raw(request: Request) -> dict:
        return {"size": len(await request.body())}

    return app


def _gen(n: int, first: bytes = b""):
    yield first
    for _ in range(n // 256):
        yield b"x" * 256


@pytest.mark.parametrize("path,limit,ctype,first", [
    ("/json", 1024, "application/json", b'{"a": "'),
    ("/raw", 1024, "application/octet-stream", b""),
    ("/upload", 4096, "multipart/form-data; boundary=b",
     b'--b\r\nContent-Disposition: form-data; name="file"; filename="f.wav"\r\n\r\n'),
])
def test_chunked_body_over_the_limit_is_413(path, limit, ctype, first):
    with TestClient(_tiny_app()) as c:
        r = c.post(path, content=_gen(limit * 4, first), headers={"content-type": ctype})
        assert r.status_code == 413 and r.json()["error"] == "body_too_large", r.text
        r = c.post(path, content=b"x" * (limit + 1), headers={"content-type": ctype})  # by Content-Length
        assert r.status_code == 413


def test_bodies_under_the_limit_pass():
    with TestClient(_tiny_app()) as c:
        assert c.post("/json", json={"a": "x" * 500}).json() == {"keys": 1}
        assert c.post("/upload", files={"file": ("f.wav", b"x" * 3000)}).json() == {"size": 3000}
        assert c.post("/raw", content=_gen(768)).json() == {"size": 768}
