"""A UI in front of a router that needs API keys: the user signs in with their key (name and key),
a wrong key is refused, and the jobs they run are theirs (a real router on Postgres and Redis, the
chat UI as Serve builds it, a real browser)."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from gpu_orchestrator.core.keys import Scope
from gpu_orchestrator.store.access import PostgresAccess
from gpu_orchestrator.store.pg_engine import create_engine
from gradio_uis.serve import asgi_builder
from tests.integration.router_harness import config, db_url, running_router  # noqa: F401 (fixture)
from tests.helpers import free_port


@pytest.fixture
def secured_chat_ui(db_url, serve_backend, tmp_path, monkeypatch):  # noqa: F811 (the fixture)
    import uvicorn

    with running_router(db_url, serve_backend.redis_url, artifacts=str(tmp_path / "art"), cfg=config(auth="on")) as r:
        engine = create_engine(db_url)
        key, token = PostgresAccess(engine).create_key(name="alice", scopes=[Scope.submit, Scope.read, Scope.cancel],
                                                       apps=["chat"])
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(asgi_builder("chat", r.base, auth=True)(), host="127.0.0.1", port=port,
                                               log_level="warning"))
        t = threading.Thread(target=server.run, daemon=True)
        t.start()
        deadline = time.monotonic() + 60
        while not server.started:
            assert time.monotonic() < deadline and t.is_alive(), "the UI did not start"
            time.sleep(0.05)
        yield {"url": f"http://127.0.0.1:{port}/", "key": key, "token": token, "engine": engine}
        server.should_exit = True
        t.join(timeout=10)
        engine.dispose()


def test_a_user_signs_in_with_their_key_and_their_jobs_are_theirs(browser, secured_chat_ui):
    ui = secured_chat_ui
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.set_default_timeout(60_000)
    try:
        page.goto(ui["url"], wait_until="load")
        page.get_by_text("needs an API key").wait_for()
        page.get_by_label("username").fill("alice")
        page.get_by_label("password").fill(ui["token"][:-2] + "xx")  # a wrong key
        page.get_by_role("button", name="Login").click()
        page.get_by_text("Incorrect Credentials").wait_for()
        page.get_by_label("username").fill("alice")  # the form was reset
        page.get_by_label("password").fill(ui["token"])
        page.get_by_role("button", name="Login").click()
        page.locator("#message textarea").fill("hello")
        page.locator("#send").click()
        deadline = time.monotonic() + 60
        while "succeeded" not in page.locator("#job-info").inner_text():
            assert time.monotonic() < deadline, page.locator("#job-info").inner_text()
            time.sleep(0.2)
        job_id = page.locator("#job-info").inner_text().split("job ", 1)[1].split()[0]
    finally:
        ctx.close()
    with ui["engine"].connect() as conn:
        owner = conn.execute(sa.text("SELECT owner FROM jobs WHERE id = :id"), {"id": job_id}).scalar()
    assert owner == ui["key"].id
