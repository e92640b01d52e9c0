"""`gpu-orch` job commands against a running orchestrator (the in-memory build, tests/memory_router.py): pages with --cursor,
short ids wherever an id goes, following a job again, and Ctrl-C on `submit --wait` leaving the job
running and saying how to follow it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from click.testing import CliRunner

from gpu_orchestrator.cli import cli
from tests.helpers import wait_for, wait_terminal
from tests.memory_router import http, rr  # noqa: F401 (fixtures)


def run(rr, *args: str, input: str | None = None):
    r = CliRunner().invoke(cli, ["--url", rr.base, *args], input=input)
    return r.exit_code, r.output


def submit(http, **params) -> str:
    return http.post("/v1/jobs", json={"app_id": "echo", "params": params}).json()["job_id"]


def test_jobs_pages_with_the_cursor_it_prints(rr, http):
    ids = [submit(http, message=f"m{i}") for i in range(5)]
    code, out = run(rr, "jobs", "--limit", "2")
    lines = out.splitlines()
    assert code == 0 and [ln.split()[0] for ln in lines[:2]] == ids[::-1][:2], out
    more = lines[-1]
    assert more.startswith("(more: gpu-orch jobs --cursor ") and more.endswith(" --limit 2)"), more
    seen = [ln.split()[0] for ln in lines[:2]]
    while more.startswith("(more:"):
        code, out = run(rr, *more[len("(more: gpu-orch "):-1].split())
        lines = out.splitlines()
        seen += [ln.split()[0] for ln in lines if not ln.startswith("(more")]
        more = lines[-1]
    assert seen == ids[::-1]
    code, out = run(rr, "jobs", "--cursor", "garbage")
    assert code == 1 and "cursor" in out, out


def test_a_short_id_works_wherever_an_id_does(rr, http):
    job = submit(http, delay_s=30)
    code, out = run(rr, "status", job[:8])
    assert code == 0 and f'"job_id": "{job}"' in out, out
    code, out = run(rr, "cancel", job[:6])
    assert code == 0 and '"status": "cancelled"' in out, out
    code, out = run(rr, "status", "ffffffff")
    assert code == 2 and "no job id starts with 'ffffffff'" in out, out
    code, out = run(rr, "status", "zz")
    assert code == 2 and "4 to 32 hex digits" in out, out
    # Two ids with one start: the API's filter shows both, and the CLI asks for more of the id.
    listed = http.get("/v1/jobs", params={"id_prefix": job[:4]}).json()["jobs"]
    assert [j["job_id"] for j in listed] == [job]


def test_follow_reattaches_and_status_wait_prints_the_end(rr, http, tmp_path):
    job = submit(http, delay_s=0.2, steps=3, message="hi")
    code, out = run(rr, "follow", job[:8])
    assert code == 0 and '"status": "succeeded"' in out and "status: succeeded" in out, out
    code, out = run(rr, "status", job, "--wait")
    assert code == 0 and '"status": "succeeded"' in out, out
    chat = http.post("/v1/jobs", json={"app_id": "chat", "params": {"messages": [{"role": "user", "content": "x"}],
                                                                    "max_tokens": 3}}).json()["job_id"]
    code, out = run(rr, "follow", chat, "--out", str(tmp_path))
    assert code == 0 and (tmp_path / f"{chat[:8]}.txt").read_text() == "t0 t1 t2\n", out


def test_ctrl_c_on_submit_wait_leaves_the_job_running_and_says_how_to_follow_it(rr, http, tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "GPU_ORCH_HOME": str(tmp_path / ".gpu-orch"), "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "gpu_orchestrator.cli", "--url", rr.base, "submit", "echo",
                          "-p", "delay_s=0.5", "-p", "steps=10", "--wait"], env=env, stderr=subprocess.PIPE, text=True)
    first = p.stderr.readline()  # "job <id> queued|running"
    job = first.split()[1]
    wait_for(lambda: http.get(f"/v1/jobs/{job}").json()["status"] == "running", "the job runs", 30)
    time.sleep(0.5)  # into the follow loop (a signal before it would only be Python's own KeyboardInterrupt)
    p.send_signal(signal.SIGINT)
    err = first + p.stderr.read()
    assert p.wait(30) == 130, err
    assert f"job {job} goes on" in err and f"gpu-orch follow {job[:8]}" in err and f"gpu-orch cancel {job[:8]}" in err, err
    assert http.get(f"/v1/jobs/{job}").json()["status"] == "running"  # not cancelled
    assert wait_terminal(http, job, 30)["status"] == "succeeded"


def test_apps_and_workers_read_as_text(rr):
    code, out = run(rr, "apps")
    assert code == 0 and "width: integer  default=64, minimum=64, maximum=2048" in out, out
    assert ".0" not in out and "choices=[transcribe, translate]" in out, out
    code, out = run(rr, "workers")
    assert code == 0 and "echo: resident  1 running (target 1)" in out and "no VRAM declared" in out, out
    assert "{}" not in out and "-/0" not in out and "queued=" not in out, out


def test_out_saves_a_transcript_as_text_and_subtitles_and_implies_wait(rr, tmp_path):
    wav = tmp_path / "clip.wav"
    wav.write_bytes(b"RIFF" + b"\0" * 40)
    code, out = run(rr, "submit", "transcribe", "-f", f"audio={wav}", "--out", str(tmp_path / "out"))
    assert code == 0 and '"status": "succeeded"' in out, out  # no --wait given: --out waits
    (txt,) = (tmp_path / "out").glob("*.txt")
    assert txt.read_text() == "hello world\n"
    assert txt.with_suffix(".srt").read_text() == "1\n00:00:00,000 --> 00:00:01,500\nhello\n\n2\n00:00:01,500 --> 00:00:03,250\nworld\n"


def test_version_and_one_error_line(rr):
    code, out = run(rr, "--version")
    assert code == 0 and out.startswith("gpu-orch, version ")
    code, out = run(rr, "submit", "nope")
    assert code == 1 and out.startswith("Error: HTTP 422: app_id: unknown app 'nope'"), out


def test_without_url_the_cli_finds_the_stack_up_started(rr, tmp_path, monkeypatch):
    """`gpu-orch up` records its URL in GPU_ORCH_HOME/state.json: every later command reaches that
    stack without --url (a stack on another port included); --url and $GPU_ORCH_URL still win."""
    import json

    monkeypatch.delenv("GPU_ORCH_URL", raising=False)
    monkeypatch.setenv("GPU_ORCH_HOME", str(tmp_path))
    (tmp_path / "state.json").write_text(json.dumps({"url": rr.base}))
    r = CliRunner().invoke(cli, ["apps"])
    assert r.exit_code == 0 and "echo" in r.output, r.output
    monkeypatch.setenv("GPU_ORCH_URL", "http://127.0.0.1:9")  # nothing listens there
    r = CliRunner().invoke(cli, ["apps"])
    assert r.exit_code == 1 and "cannot reach the router at http://127.0.0.1:9" in r.output, r.output
