"""The UIs' pure parts: what a form becomes as job params, how router errors read, transcript
downloads, and the admin page's tables from the router's answers."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from gpu_orchestrator.client import ApiError
from gradio_uis.admin import cost_frame, cost_line, decision_rows, gpu_rows, job_rows, minute_frame, model_rows, queue_rows
from gradio_uis.chat import chat_messages
from gradio_uis.common import event_progress, explain, param_info, typed_int, where_ran
from gradio_uis.formats import segment_rows, srt_time, to_srt, to_text
from gradio_uis.images import image_params


def test_blank_fields_are_left_to_the_router_and_values_go_as_typed():
    p = image_params("  ", "", 512, 3000, 20, 5.0, "", 1)
    assert "prompt" not in p and "negative_prompt" not in p and "seed" not in p  # the router says prompt is required
    assert p["height"] == 3000  # out of range: the router's check names it, not the form's
    assert image_params("fox", "", 64, 64, 1, 0, "42", 2)["seed"] == 42
    assert image_params("fox", "", 64, 64, 1, 0, "x1", 2)["seed"] == "x1"
    assert typed_int(" 7 ") == 7 and typed_int("") is None and typed_int(None) is None and typed_int("-1") == "-1"


def test_router_errors_read_as_field_and_reason():
    e = ApiError(422, {"error": "invalid_params", "message": "invalid params",
                       "fields": [{"field": "params.width", "message": "must be <= 2048"},
                                  {"field": "params.prompt", "message": "required parameter is missing"}]})
    assert explain(e) == "width: must be <= 2048; prompt: required parameter is missing"
    assert "try again in 5 s" in explain(ApiError(429, {"error": "queue_full", "message": "queue full"}, "5"))
    assert explain(ConnectionError("refused")).startswith("could not reach the orchestrator")


def test_progress_from_events_and_where_a_job_ran():
    assert event_progress({"event": "progress", "data": {"step": 3, "steps": 12}}) == (0.25, "step 3/12")
    assert event_progress({"event": "progress", "data": {"stage": "decoded"}}) == (None, "decoded")
    assert event_progress({"event": "status", "data": {"status": "succeeded"}}) == (1.0, "succeeded")
    assert event_progress({"event": "progress", "data": {"token": "x"}}) is None
    assert where_ran({"backend": "local:sdxl"}) == "this cluster (sdxl)"
    assert where_ran({"backend": None}) == "-"
    assert where_ran({"backend": "replicate:stability-ai/sdxl", "route_reason": "estimated local wait 40 s > "
                      "max_local_wait_s 30 s"}) == ("Replicate (stability-ai/sdxl), because estimated local wait 40 s > "
                                                     "max_local_wait_s 30 s")
    app = {"parameters": [{"name": "width", "minimum": 64.0, "maximum": 2048.0, "multiple_of": 8},
                          {"name": "steps", "default": 30.0, "minimum": 1.0, "maximum": 150.0}]}
    assert param_info(app, "width") == "64–2048, multiple of 8" and param_info(app, "nope") is None
    assert param_info(app, "steps") == "default 30, 1–150"


def test_chat_messages_put_the_system_prompt_first():
    turns = [{"role": "user", "content": "hi"}]
    assert chat_messages("  ", turns) == turns
    assert chat_messages("be brief", turns)[0] == {"role": "system", "content": "be brief"}


def test_srt_and_text_downloads():
    segs = [{"id": 7, "start": 0.0, "end": 1.5, "text": " hello"}, {"id": 8, "start": 61.25, "end": 3723.004, "text": "x"}]
    assert srt_time(3723.004) == "01:02:03,004"
    assert to_srt(segs) == "1\n00:00:00,000 --> 00:00:01,500\nhello\n\n2\n00:01:01,250 --> 01:02:03,004\nx\n"
    assert to_text({"text": " hello x "}) == "hello x\n"
    assert segment_rows(segs)[0] == ["00:00:00.000", "00:00:01.500", "hello"]


FLEET = {
    "models": [
        {"deployment": "sdxl", "state": "resident", "vram_held_gb": 15.2, "vram_declared_gb": 16, "target_replicas": 1,
         "replica_states": {"RUNNING": 1}, "queued": 2, "running": 1,
         "arbiter": {"placement": ["gpu0"], "loads": 3, "evictions": 2, "last_decision": "load sdxl on gpu0"}},
        {"deployment": "llm", "state": "cold", "vram_held_gb": None, "vram_declared_gb": 22, "target_replicas": 0,
         "replica_states": {}, "queued": 0, "running": 0, "arbiter": {"placement": ["gpu0"], "loads": 1, "evictions": 1}},
    ],
    "arbiter": {"leader": "r1", "decided_at": 1_700_000_000.0, "swap_credit_s": {"gpu0": 7.5},
                "history": [[1_700_000_000.0, "evict llm for sdxl"], [1_700_000_001.0, "load sdxl on gpu0"]],
                "reasons": ["load sdxl on gpu0", "zimage waits: 1 queued, overloaded: swap budget"]},
}


def test_admin_tables():
    rows = model_rows(FLEET)
    assert rows[0][:7] == ["sdxl", "resident", "gpu0", 15.2, 16, "", 1] and rows[1][1] == "cold" and rows[1][3] == ""
    parked = {"models": [{"deployment": "llm", "state": "warm", "host_held_gb": 14.04, "vram_declared_gb": 14,
                          "replica_states": {"RUNNING": 1}}]}
    assert model_rows(parked)[0][:7] == ["llm", "warm", "", "", 14, 14.0, 1]  # the warm tier: in host memory
    assert gpu_rows(FLEET) == [["gpu0", "", "sdxl", 15.2, 16.0, 7.5]]  # held as reported; a cold model holds nothing
    sized = {**FLEET, "arbiter": {**FLEET["arbiter"], "gpus": {"gpu0": {"vram_gb": 24.0, "held_gb": 16.0, "virtual": True}}}}
    assert gpu_rows(sized) == [["gpu0 (virtual)", 24.0, "sdxl", 15.2, 16.0, 7.5]]
    assert "its GPU is **virtual**" in decision_rows(sized)[1] and "virtual" not in decision_rows(FLEET)[1]
    decisions, waiting = decision_rows(FLEET)
    assert [d[1] for d in decisions] == ["load sdxl on gpu0", "evict llm for sdxl"]  # newest first
    assert "zimage waits" in waiting and "load sdxl" not in waiting and "leader `r1`" in waiting
    assert decision_rows({})[1].startswith("**Arbiter:** the arbiter is off")
    stats = {"apps": {"sdxl": {"queued": 2, "running": 1, "oldest_queued_age_s": 12.345,
                               "cloud": {"queued": 3, "running": 1, "oldest_queued_age_s": 2.0}}},
             "jobs_per_minute": [{"minute": "2026-11-28T10:01:00+00:00", "status": "succeeded", "count": 4}]}
    assert queue_rows(stats, ["chat", "sdxl"]) == [["chat", 0, 0, "", ""], ["sdxl", 2, 1, 12.3, "3/1"]]
    frame = minute_frame(stats)
    assert list(frame.columns) == ["minute", "status", "jobs"] and frame.iloc[0]["jobs"] == 4
    local = dt.datetime.fromisoformat("2026-11-28T10:01:00+00:00").astimezone().strftime("%H:%M")
    assert frame.iloc[0]["minute"] == local
    assert minute_frame({}).empty
    job = {"job_id": "j1", "app_id": "sdxl", "status": "failed", "attempts": 2, "max_attempts": 2,
           "backend": "local:sdxl", "error": "boom", "created_at": "2026-11-28T10:01:02.5+00:00"}
    assert job_rows([job]) == [["2026-11-28 10:01:02", "j1", "sdxl", "failed", "2/2", "local:sdxl", "boom"]]
    waiting = {**job, "status": "queued", "error": None, "backend": None, "attempts": 0,
               "waiting_for": {"model": "sdxl", "state": "loading", "about_s": 8, "message": "..."}}
    assert job_rows([waiting])[0][3] == "queued: waiting for sdxl (loading)"


@pytest.mark.parametrize("ui", ["images", "speech", "chat", "admin"])
def test_each_ui_builds_without_a_router(ui):
    import importlib

    demo = importlib.import_module(f"gradio_uis.{ui}").build("http://127.0.0.1:9")  # nothing listens there
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert "error" in ids


def test_serve_builder_refuses_unknown_uis_and_fields():
    from gradio_uis.serve import build_app

    with pytest.raises(ValueError, match="args.ui: must be one of images, speech, chat, admin"):
        build_app({"ui": "nope"})
    with pytest.raises(ValueError, match=r"args.uis: must be one of images, speech, chat, admin \(got 'nope'\)"):
        build_app({"uis": ["chat", "nope"]})
    with pytest.raises(ValueError, match="args.uis: a list of distinct pages"):
        build_app({"uis": ["chat", "chat"]})
    with pytest.raises(ValueError, match="not both or neither"):
        build_app({"ui": "chat", "uis": ["chat"]})
    with pytest.raises(ValueError, match="unknown field"):
        build_app({"ui": "chat", "colour": "red"})


def test_the_shipped_uis_are_one_application_and_up_lists_each_page():
    import yaml

    from gradio_uis.serve import page_paths, pages

    cfg = yaml.safe_load(open(Path(__file__).resolve().parents[2] / "serve_config.yaml"))
    uis = [a for a in cfg["applications"] if a["import_path"] == "gradio_uis.serve:build_app"]
    assert len(uis) == 1 and pages(uis[0]["args"]) == ["images", "speech", "chat", "admin"]
    assert page_paths(uis[0]) == ["/ui/images/", "/ui/speech/", "/ui/chat/", "/ui/admin/"]
    assert page_paths({"route_prefix": "/ui/admin-arb", "args": {"ui": "admin"}}) == ["/ui/admin-arb/"]


def test_one_replica_serves_every_page_and_the_prefix_leads_to_the_first():
    from fastapi.testclient import TestClient

    from gradio_uis.serve import asgi_builder

    app = asgi_builder(["chat", "speech"], "http://127.0.0.1:9")()  # nothing listens there
    with TestClient(app, root_path="/ui") as c:
        for prefix in ("/ui/", "/"):
            r = c.get(prefix, follow_redirects=False)
            assert r.status_code == 307 and r.headers["location"] == "/ui/chat/"
        for page in ("chat", "speech"):
            assert c.get(f"/ui/{page}/").status_code == 200
        assert c.get("/ui/images/").status_code == 404


def test_an_idle_ui_queue_polls_at_gradios_windows_pace():
    """Gradio's queue polls every 1 ms when idle on Linux; the Serve builder slows it (a private
    attribute: this notices a Gradio that renames it)."""
    import gradio as gr

    from gradio_uis.serve import PROGRESS_IDLE_S, QUEUE_IDLE_S, quiet_queue

    with gr.Blocks() as demo:
        gr.Markdown("hi")
    assert demo._queue.sleep_when_free < QUEUE_IDLE_S
    quiet_queue(demo)
    assert (demo._queue.sleep_when_free, demo._queue.progress_update_sleep_when_free) == (QUEUE_IDLE_S, PROGRESS_IDLE_S)


@pytest.mark.parametrize("ui", ["images", "speech", "chat", "admin"])
def test_each_ui_runs_standalone_against_a_router_url(ui):
    """`python -m gradio_uis.<ui> --api URL --port N` serves the page on its own (here against a
    router that is not there: the page still loads; its calls then say the router is unreachable)."""
    import socket
    import subprocess
    import sys
    import time

    import httpx

    r = subprocess.run([sys.executable, "-m", f"gradio_uis.{ui}", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--api" in r.stdout and "GPU_ORCH_URL" in r.stdout, r.stdout + r.stderr
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    p = subprocess.Popen([sys.executable, "-m", f"gradio_uis.{ui}", "--api", "http://127.0.0.1:9", "--port", str(port)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env={**__import__("os").environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    try:
        deadline, page = time.monotonic() + 90, None
        while page is None and time.monotonic() < deadline and p.poll() is None:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
            except httpx.HTTPError:
                time.sleep(0.3)
        assert page is not None and page.status_code == 200, (p.poll(), p.stdout.read() if p.poll() is not None else "")
        assert "GPU Orchestrator" in page.text  # the page's title, served by this process alone
    finally:
        p.kill()
        p.wait(timeout=10)


def test_admin_cost_line_local_vs_cloud():
    costs = {"total": {"jobs": 4, "cloud_jobs": 1, "gpu_seconds": 12.4, "local_usd": 0.0021, "cloud_usd": 0.00312},
             "cloud_share": 0.25}
    assert cost_line(costs) == ("**Last 24 h:** local $0.0021 (3 jobs), cloud $0.0031 (1 jobs), cloud share 25%; 12 GPU-s")
    costs["groups"] = [{"key": "local", "jobs": 3, "cloud_jobs": 0, "gpu_seconds": 12.0, "usd": 0.0021},
                       {"key": "replicate", "jobs": 1, "cloud_jobs": 1, "gpu_seconds": 0.4, "usd": 0.00312}]
    frame = cost_frame(costs)
    assert frame.to_dict("records") == [{"backend": "local", "usd": 0.0021, "jobs": 3},
                                        {"backend": "replicate", "usd": 0.00312, "jobs": 1}]
    assert list(cost_frame({}).columns) == ["backend", "usd", "jobs"]  # empty, but a frame the chart takes


def test_the_uis_start_from_the_apis_own_defaults():
    """What the image and chat pages show before anything is typed is what the API would use
    (serve_config.yaml's sdxl and chat apps); the image page then takes each model's from the router."""
    from pathlib import Path

    import yaml

    from gradio_uis import chat, images

    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "serve_config.yaml").read_text())
    apps = {a["id"]: {p["name"]: p.get("default") for p in a["parameters"]}
            for a in next(x for x in cfg["applications"] if x["name"] == "orchestrator")["args"]["apps"]}

    def shown(demo) -> dict:
        return {b.elem_id: b.value for b in demo.blocks.values() if getattr(b, "elem_id", None)}

    page = shown(images.build("http://127.0.0.1:9"))
    sdxl = apps["sdxl"]
    assert (page["width"], page["height"], page["steps"], page["guidance"], page["num-images"]) == (
        sdxl["width"], sdxl["height"], sdxl["num_inference_steps"], sdxl["guidance_scale"], sdxl["num_images"])
    page = shown(chat.build("http://127.0.0.1:9"))
    assert (page["max-tokens"], page["min-tokens"], page["temperature"]) == (
        apps["chat"]["max_tokens"], apps["chat"]["min_tokens"], apps["chat"]["temperature"])
    app = {"parameters": [{"name": "num_inference_steps", "default": 9}, {"name": "seed"}]}
    from gradio_uis.choices import default_of

    assert default_of(app, "num_inference_steps") == {"value": 9} and default_of(app, "seed") == {}
