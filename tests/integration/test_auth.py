"""API keys on a real router (Postgres, Redis, the FastAPI app over HTTP, the handle methods): who
may do what, whose jobs each key sees, quotas, revocation, and that tokens leak nowhere."""

from __future__ import annotations

import io
import logging
import time
import uuid

import httpx
import openai
import pytest
import sqlalchemy as sa

from gpu_orchestrator.core.keys import AuthError, Forbidden, Quota, Scope
from gpu_orchestrator.core.jobs import JobNotFound
from gpu_orchestrator.store.access import PostgresAccess
from gpu_orchestrator.store.pg_engine import create_engine

from tests.helpers import wait_terminal

from .router_harness import config, db_url, running_router  # noqa: F401 (fixtures)

OPEN_PATHS = {"/healthz", "/docs", "/openapi.json", "/static/swagger-ui"}


@pytest.fixture
def secured(db_url, serve_backend, tmp_path, monkeypatch):
    with running_router(db_url, serve_backend.redis_url, artifacts=str(tmp_path / "art"), cfg=config(auth="on")) as r:
        engine = create_engine(db_url)
        r.access = PostgresAccess(engine)
        r.engine = engine
        yield r
        engine.dispose()


def key(r, name, *scopes, apps=None, quota=Quota()):
    return r.access.create_key(name=name, scopes=[Scope(s) for s in scopes], apps=apps, quota=quota)[1]


def client(r, token=None):
    return httpx.Client(base_url=r.base, timeout=30, headers={"Authorization": f"Bearer {token}"} if token else {})


def submit(c, app="echo", **params):
    resp = c.post("/v1/jobs", json={"app_id": app, "params": params})
    assert resp.status_code == 202, resp.text
    return resp.json()["job_id"]


def test_every_route_but_health_and_docs_needs_a_key(secured):
    checked = 0
    with client(secured) as anon, client(secured, "go_000000000000_" + "x" * 43) as forged:
        paths = anon.get("/openapi.json").json()["paths"]  # every route of the API, as documented
        for path, methods in paths.items():
            if any(path.startswith(p) for p in OPEN_PATHS):
                continue
            concrete = path.replace("{job_id}", str(uuid.uuid4())).replace("{key}", "uploads/x/y.wav") \
                .replace("{id_or_name}", "alice")
            for method in methods:
                for c, what in ((anon, "no key"), (forged, "unknown key")):
                    resp = c.request(method.upper(), concrete, json={})
                    assert resp.status_code == 401, (method, path, what, resp.status_code, resp.text)
                    assert resp.headers["www-authenticate"] == "Bearer"
                    checked += 1
    assert checked >= 2 * 20  # jobs, artifacts, apps, models, chat, workers, stats, costs, prune, keys, seed routes
    with client(secured) as anon:
        assert anon.get("/healthz").status_code == 200
        assert anon.get("/docs").status_code == 200


def test_scopes_decide_what_a_key_may_do(secured):
    reader = key(secured, "reader", "read")
    submitter = key(secured, "submitter", "submit", "read", apps=["echo"])
    with client(secured, reader) as r, client(secured, submitter) as s:
        resp = r.post("/v1/jobs", json={"app_id": "echo", "params": {}})
        assert resp.status_code == 403 and "'submit' scope" in resp.json()["message"]
        resp = s.post("/v1/jobs", json={"app_id": "chat", "params": {"messages": [{"role": "user", "content": "hi"}]}})
        assert resp.status_code == 403 and resp.json()["fields"][0]["field"] == "app_id"
        assert "echo" in resp.json()["message"]
        for path in ("/v1/workers", "/v1/costs", "/v1/admin/keys", "/v1/stats"):
            assert s.get(path).status_code == 403, path
        assert s.post("/v1/admin/prune", json={"dry_run": True}).status_code == 403
        job = submit(s, message="mine")
        assert s.delete(f"/v1/jobs/{job}").status_code == 403  # no cancel scope
        assert r.get("/v1/apps").status_code == 200  # any valid key reads the catalogue
        me = s.get("/v1/keys/me").json()
        assert me["name"] == "submitter" and me["scopes"] == ["read", "submit"] and me["apps"] == ["echo"]


def test_another_keys_jobs_and_artifacts_do_not_exist_for_a_key(secured):
    alice = key(secured, "alice", "submit", "read", "cancel")
    bob = key(secured, "bob", "submit", "read", "cancel")
    auditor = key(secured, "auditor", "read:all")
    admin = key(secured, "ops", "admin")
    with client(secured, alice) as a, client(secured, bob) as b, client(secured, auditor) as au, \
            client(secured, admin) as ad:
        up = a.post("/v1/artifacts", files={"file": ("voice.wav", io.BytesIO(b"RIFF....WAVE"), "audio/wav")})
        assert up.status_code == 201, up.text
        uri = up.json()["artifact"]
        job = a.post("/v1/jobs", json={"app_id": "transcribe", "params": {"audio": uri}}).json()["job_id"]
        slow = submit(a, message="slow", delay_s=30)
        done = wait_terminal(a, job)
        assert done["status"] == "succeeded" and done["owner"] is not None
        url = up.json()["url"]
        for path in (f"/v1/jobs/{job}", f"/v1/jobs/{job}/events", url, f"/status/{job}"):
            resp = b.get(path)
            assert resp.status_code == 404, (path, resp.status_code)
            assert a.get(path).status_code == 200, path
            assert au.get(path).status_code == 200, path
        assert b.delete(f"/v1/jobs/{slow}").status_code == 404
        assert b.get("/v1/jobs").json()["jobs"] == []
        assert {j["job_id"] for j in a.get("/v1/jobs").json()["jobs"]} == {job, slow}
        assert {j["job_id"] for j in au.get("/v1/jobs").json()["jobs"]} >= {job, slow}
        # read:all sees, but cancelling another key's job is an admin's
        assert au.delete(f"/v1/jobs/{slow}").status_code == 403
        assert ad.delete(f"/v1/jobs/{slow}").json()["status"] == "cancelled"
        # the same Idempotency-Key from two keys: two jobs, neither sees the other's
        h = {"Idempotency-Key": "nightly-1"}
        ja = a.post("/v1/jobs", json={"app_id": "echo", "params": {}}, headers=h).json()["job_id"]
        jb = b.post("/v1/jobs", json={"app_id": "echo", "params": {}}, headers=h).json()["job_id"]
        assert ja != jb
        assert a.post("/v1/jobs", json={"app_id": "echo", "params": {}}, headers=h).status_code == 200


def test_result_artifacts_follow_their_jobs_owner(secured):
    alice = key(secured, "alice", "submit", "read")
    bob = key(secured, "bob", "submit", "read")
    # The echo model returns its params: a result naming an artifact, as an image model's does.
    with client(secured, alice) as a, client(secured, bob) as b:
        up = a.post("/v1/artifacts", files={"file": ("x.png", io.BytesIO(b"\x89PNG...."), "image/png")}).json()
        job = submit(a, message=up["artifact"])
        assert wait_terminal(a, job)["status"] == "succeeded"
    with secured.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT uri, job_id FROM artifact_owners WHERE job_id IS NOT NULL")).all()
    assert [(r.uri, str(r.job_id)) for r in rows] == [(up["artifact"], job)]
    with client(secured, bob) as b:
        assert b.get(up["url"]).status_code == 404
    # Retention takes the grants with the job and its files.
    with secured.engine.begin() as conn:
        conn.execute(sa.text("UPDATE jobs SET finished_at = now() - interval '40 days'"))
    assert len(secured.router.store.prune(older_than_s=30 * 86_400, limit=10)) == 1
    with secured.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM artifact_owners")).scalar() == 0


def test_a_revoked_key_is_refused_at_once(secured):
    admin = key(secured, "ops", "admin")
    carol = key(secured, "carol", "submit", "read")
    with client(secured, carol) as c, client(secured, admin) as ad:
        job = submit(c)
        assert c.get(f"/v1/jobs/{job}").status_code == 200
        listed = ad.get("/v1/admin/keys").json()["keys"]
        assert {k["name"] for k in listed} == {"ops", "carol"}
        assert all("token" not in k and "secret_hash" not in k for k in listed)
        revoked = ad.delete("/v1/admin/keys/carol")
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        assert c.get(f"/v1/jobs/{job}").status_code == 401
        assert c.post("/v1/jobs", json={"app_id": "echo", "params": {}}).status_code == 401
        assert ad.delete("/v1/admin/keys/carol").status_code == 404  # already revoked
        made = ad.post("/v1/admin/keys", json={"name": "dave", "scopes": ["submit", "bogus"]})
        assert made.status_code == 422 and made.json()["fields"][0]["field"] == "scopes"
        made = ad.post("/v1/admin/keys", json={"name": "dave", "scopes": ["submit", "read"], "apps": ["echo"]})
        assert made.status_code == 201 and made.json()["token"].startswith("go_")
        assert ad.post("/v1/admin/keys", json={"name": "dave", "scopes": ["read"]}).status_code == 409
    with client(secured, made.json()["token"]) as d:
        assert d.post("/v1/jobs", json={"app_id": "echo", "params": {}}).status_code == 202


def test_quotas_answer_429_with_retry_after(secured):
    burst = key(secured, "burst", "submit", "read", quota=Quota(jobs_per_min=3))
    queue = key(secured, "queue", "submit", "read", "cancel", quota=Quota(max_queued=2))
    with client(secured, burst) as b, client(secured, queue) as q:
        for _ in range(3):
            submit(b)
        resp = b.post("/v1/jobs", json={"app_id": "echo", "params": {}})
        assert resp.status_code == 429 and "3 jobs per minute" in resp.json()["message"]
        assert 1 <= int(resp.headers["retry-after"]) <= 60
        first = submit(q, delay_s=30)
        submit(q, delay_s=30)
        resp = q.post("/v1/jobs", json={"app_id": "echo", "params": {}})
        assert resp.status_code == 429 and "2 jobs queued or running" in resp.json()["message"]
        assert resp.headers["retry-after"] == "5"
        assert q.delete(f"/v1/jobs/{first}").status_code == 200
        submit(q)  # a slot came free
        # a refused submit loses nothing already accepted, and leaves no job behind
        assert len(q.get("/v1/jobs").json()["jobs"]) == 3


def test_handle_methods_check_the_same_key(secured):
    alice = key(secured, "alice", "submit", "read")
    bob = key(secured, "bob", "submit", "read", "cancel")
    router = secured.router
    with pytest.raises(AuthError):
        secured.call(router.submit("echo", {}))
    job = secured.call(router.submit("echo", {"message": "hi"}, api_key=alice))
    assert secured.call(router.wait(job["job_id"], 10, api_key=alice))["status"] == "succeeded"
    for call in (router.get(job["job_id"], api_key=bob), router.wait(job["job_id"], 1, api_key=bob),
                 router.cancel(job["job_id"], api_key=bob)):
        with pytest.raises(JobNotFound):
            secured.call(call)
    with pytest.raises(Forbidden):
        secured.call(router.cancel(job["job_id"], api_key=alice))  # alice has no cancel scope


def test_the_openai_client_sends_the_same_key(secured):
    chatter = key(secured, "chatter", "submit", "read", apps=["chat"])
    ok = openai.OpenAI(base_url=secured.base + "/v1", api_key=chatter, max_retries=0)
    out = ok.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert out.choices[0].message.content
    assert [m.id for m in ok.models.list().data] == ["chat"]  # only the apps this key may use
    bad = openai.OpenAI(base_url=secured.base + "/v1", api_key="sk-not-ours", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])


def test_tokens_appear_in_no_log_row_or_event(secured, caplog):
    caplog.set_level(logging.DEBUG)
    token = key(secured, "eve", "submit", "read", "cancel")
    secret = token.rsplit("_", 1)[1]
    with client(secured, token) as e:
        job = submit(e, message="hello", steps=2)
        wait_terminal(e, job)
        events = e.get(f"/v1/jobs/{job}/events").text
        body = e.get(f"/v1/jobs/{job}").text
        cancelled = submit(e, delay_s=30)
        e.delete(f"/v1/jobs/{cancelled}")
        e.get(f"/v1/jobs/{cancelled}/events")
    with client(secured, token[:-1] + ("A" if token[-1] != "A" else "B")) as wrong:
        assert wrong.get(f"/v1/jobs/{job}").status_code == 401  # a refused key is logged by its id only
    with secured.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT row_to_json(j)::text FROM jobs j")).scalars().all()
        keys = conn.execute(sa.text("SELECT row_to_json(k)::text FROM api_keys k")).scalars().all()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for where, text in (("events", events), ("job", body), ("rows", "\n".join(rows)), ("keys table", "\n".join(keys)),
                        ("logs", logged)):
        assert secret not in text and token not in text, where
    assert "refused API key id" in logged


def test_quotas_hold_across_router_replicas(db_url, serve_backend, tmp_path, monkeypatch):
    cfg = config(auth="on")
    with running_router(db_url, serve_backend.redis_url, artifacts=str(tmp_path / "a"), cfg=cfg) as one, \
            running_router(db_url, serve_backend.redis_url, artifacts=str(tmp_path / "b"), cfg=cfg) as two:
        engine = create_engine(db_url)
        token = PostgresAccess(engine).create_key(name="burst", scopes=[Scope.submit], quota=Quota(jobs_per_min=4))[1]
        engine.dispose()
        with client(one, token) as a, client(two, token) as b:
            answers = [c.post("/v1/jobs", json={"app_id": "echo", "params": {}}).status_code for c in (a, b, a, b, a, b)]
    assert answers == [202, 202, 202, 202, 429, 429]


def test_keys_are_cached_while_revokes_are_heard_and_a_revoke_elsewhere_reaches_every_replica(db_url):
    """Two router replicas' key caches on one database: a key is read once, not per request; a
    revoke from anywhere (here the CLI's path: the store directly) is refused by both as soon as
    its notification lands; with the listener down, every request reads the key again."""
    import asyncio

    from gpu_orchestrator.service.auth import Auth, KeyCache
    from gpu_orchestrator.store.access import KEYS_CHANNEL
    from gpu_orchestrator.store.pg_listen import Listener
    from tests.helpers import wait_for

    engine = create_engine(db_url)
    access = PostgresAccess(engine)
    reads = []

    class Counting:
        def key_for(self, key_id):
            reads.append(key_id)
            return access.key_for(key_id)

    replicas = []
    for _ in range(2):
        cache = KeyCache()
        listener = Listener(db_url, KEYS_CHANNEL, cache.forget, cache.set_live, retry_s=0.1).start()
        replicas.append((Auth(Counting(), required=True, cache=cache), cache, listener))
    try:
        wait_for(lambda: all(c._live for _, c, _ in replicas), "both caches listening", 10)
        _, token = access.create_key(name="eve", scopes=[Scope.submit])
        for auth, _, _ in replicas:
            for _ in range(5):
                assert asyncio.run(auth.caller(token)).name == "eve"
        assert len(reads) == 2  # once per replica, not per request
        access.revoke_key("eve")
        t0 = time.monotonic()

        def refused(auth):
            try:
                asyncio.run(auth.caller(token))
                return False
            except AuthError:
                return True
        wait_for(lambda: all(refused(a) for a, _, _ in replicas), "the revoke heard by both replicas", 5, every_s=0.005)
        assert time.monotonic() - t0 < 1.0
        # Not listening (the connection lost): nothing is cached, each request reads the key.
        _, token2 = access.create_key(name="fay", scopes=[Scope.submit])
        auth, cache, listener = replicas[0]
        listener.stop()
        cache.set_live(False)
        before = len(reads)
        for _ in range(3):
            asyncio.run(auth.caller(token2))
        assert len(reads) - before == 3
    finally:
        for _, _, listener in replicas:
            listener.stop()
        engine.dispose()


def test_an_open_stack_refuses_a_key_that_is_not_one_of_its_own(db_url, serve_backend, tmp_path, monkeypatch):
    with running_router(db_url, serve_backend.redis_url, artifacts=str(tmp_path / "art"), cfg=config(auth="off")) as r:
        access = PostgresAccess(create_engine(db_url))
        good = access.create_key(name="alice", scopes=[Scope.submit, Scope.read])[1]
        revoked = access.create_key(name="bob", scopes=[Scope.submit])[1]
        access.revoke_key("bob")
        for token in (None, "anonymous", good):  # no key, the anonymous token, a key of ours
            with client(r, token) as c:
                assert c.get("/v1/jobs").status_code == 200, token
        for token in ("sk-proj-abc123", "unused", revoked, good[:-1] + "x"):
            with client(r, token) as c:
                resp = c.get("/v1/jobs")
                assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer", (token, resp.text)
        with client(r, "unused") as c:
            assert "anonymous" in c.get("/v1/jobs").json()["message"]  # the way out, named
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=r.base + "/v1", api_key="sk-typo", max_retries=0).models.list()
        assert openai.OpenAI(base_url=r.base + "/v1", api_key="anonymous").models.list().data


def test_the_anonymous_token_is_refused_where_keys_are_required(secured):
    with client(secured, "anonymous") as c:
        assert c.get("/v1/jobs").status_code == 401
