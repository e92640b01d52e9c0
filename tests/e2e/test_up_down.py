"""The README's main command path on a fresh machine: `gpu-orch up --demo` on the embedded default
with an empty HOME (Ray's auth token made by `up`, nothing from ~/.ray), a job through it, the Ray
CLI and a Python driver reaching the stack with the token `up` made, `gpu-orch down` leaving no
process, and the data surviving a restart."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml

from gpu_orchestrator import Client
from gpu_orchestrator.client import ApiError

from tests.helpers import free_port

from .conftest import GPU_ORCH, ROOT, processes_mentioning


def readme_python() -> str:
    """The README's Python example (the code block that uses Serve handles)."""
    blocks = (ROOT / "README.md").read_text().split("```python\n")[1:]
    return next(b.split("```")[0] for b in blocks if "get_app_handle" in b)


def listeners(port: int) -> set[str]:
    """Names of the processes listening on this TCP port."""
    pids = {c.pid for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port}
    return {psutil.Process(pid).name() for pid in pids if pid}


@pytest.mark.serve
@pytest.mark.timeout(1500)  # a fresh Ray cluster builds each model's runtime_env (minutes)
def test_up_submit_down_restart_keeps_jobs(user):
    port = free_port()
    cfg = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    cfg["http_options"] = {"host": "127.0.0.1", "port": port}
    config = user.home.parent / f"{user.home.name}-serve_config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    home = user.gpu_home
    try:
        # The README's main command: the demo profile, every model tiny and untrained, on a CPU.
        out = user.ok("up", "--demo", "--config", str(config), "--num-cpus", "4", timeout=900)
        assert "starting embedded Postgres" in out and "starting embedded Redis" in out
        assert f"http://127.0.0.1:{port}/v1/jobs" in out and "demo profile" in out
        assert "sdxl: " in out  # deployment progress while the runtime_envs build
        assert (home / "postgres" / "PG_VERSION").exists()
        # `up` made the Ray token, private, with the stack's state; HOME's ~/.ray played no part.
        token = home / "ray_auth_token"
        assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text()) == 64
        assert stat.S_IMODE((home / "state.json").stat().st_mode) == 0o600
        assert not (user.home / ".ray").exists()
        assert f"RAY_AUTH_TOKEN_PATH={token}" in out  # the hint for the `ray` CLI
        # Loopback only: the API runs open, says so, and the bootstrap admin key is shown this once.
        assert "API auth:       OFF" in out
        admin_file = home / "admin_key"
        admin_key = admin_file.read_text().strip()
        assert stat.S_IMODE(admin_file.stat().st_mode) == 0o600 and f"Admin API key:  {admin_key}" in out
        alice = user.gpu_orch("keys", "create", "--name", "alice", "--scopes", "submit,read", "--apps", "echo")
        assert alice.returncode == 0 and "shown once" in alice.stderr, alice.stderr
        alice_key = alice.stdout.strip()
        listed = user.ok("keys", "list")
        assert "alice" in listed and "admin" in listed and alice_key not in listed and admin_key not in listed
        with Client(f"http://127.0.0.1:{port}", api_key=alice_key) as c:
            mine = c.wait(c.submit("echo", {"message": "mine"})["job_id"], timeout=120)
            assert mine["status"] == "succeeded" and mine["owner"] == alice_key.split("_")[1]
        assert "revoked key alice" in user.ok("keys", "revoke", "alice")
        with Client(f"http://127.0.0.1:{port}", api_key=alice_key) as c:
            with pytest.raises(ApiError) as refused:
                c.get(mine["job_id"])
            assert refused.value.status == 401  # a revoked key is refused even by an open stack
        with Client(f"http://127.0.0.1:{port}") as c:
            job = c.submit("echo", {"message": "embedded", "steps": 2})
            done = c.wait(job["job_id"], timeout=120)
            assert done["status"] == "succeeded" and done["result"]["echo"]["message"] == "embedded"
            apps = {a["id"]: a for a in c.apps()}
            assert {"sdxl", "zimage", "transcribe", "chat"} <= set(apps) and "untrained" in apps["sdxl"]["name"]
            img = c.wait(c.submit("sdxl", {"prompt": "a red fox", "width": 128, "height": 64,
                                           "num_inference_steps": 2})["job_id"], timeout=300)
            assert img["status"] == "succeeded" and img["result"]["untrained"] is True, img
            png = c.download(img["result"]["images"][0]["url"])
            assert png[:8] == b"\x89PNG\r\n\x1a\n"
        # The demo's arbiter on its virtual 32 GB GPU (what `make demo` shows): the LLM (22 GB) does
        # not fit beside SDXL (16 GB), so the chat job waits, told why, while SDXL goes and the LLM loads.
        url = ("--url", f"http://127.0.0.1:{port}")
        chat = user.ok(*url, "submit", "chat", "-p", 'messages=[{"role":"user","content":"hi"}]', "-p", "max_tokens=4",
                       "--wait", timeout=300)
        assert "waiting for llm" in chat and '"succeeded"' in chat, chat[-3000:]
        arb = user.ok(*url, "arbiter")
        assert "gpu virtual-gpu0 VIRTUAL" in arb and "load llm on virtual-gpu0" in arb and "llm loaded in" in arb, arb
        assert "sdxl loaded in" in arb and ("evict sdxl" in arb or "scale sdxl to zero" in arb), arb
        assert "VIRTUAL" in user.ok(*url, "workers")
        with Client(f"http://127.0.0.1:{port}") as c:
            # The web UIs came up with the stack, at the routes `up` prints (tests/browser drives them).
            for ui in ("images", "speech", "chat", "admin"):
                assert f"http://127.0.0.1:{port}/ui/{ui}/" in out
                page = c.http.get(f"/ui/{ui}/", follow_redirects=True)
                assert page.status_code == 200 and "gradio" in page.text.lower(), (ui, page.status_code)
            # Artifacts and tiny models live under GPU_ORCH_HOME.
            assert list((home / "artifacts" / "sdxl").rglob("*.png"))
            assert (home / "tiny-models" / "sdxl" / "BUILT").exists()
        # Each part's Serve log, by name.
        router_log = user.ok("logs", "-n", "500")
        assert "replica_orchestrator_router_" in router_log and "POST /v1/jobs" in router_log, router_log[-2000:]
        assert "replica_orchestrator_sdxl_" in user.ok("logs", "sdxl", "-n", "5")
        nope = user.gpu_orch("logs", "nope")
        assert nope.returncode == 2 and "router" in nope.stderr and "sdxl" in nope.stderr, nope.stderr

        state = json.loads((home / "state.json").read_text())
        # The README's hint for the `ray`/`serve` CLIs, and the helper tests and benches use.
        ray_cli = Path(sys.executable).parent / "ray"
        cli = subprocess.run(["bash", "-c", f'eval "$({GPU_ORCH} env)" && {ray_cli} status --address {state["ray_address"]}'],
                             env=user.env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert cli.returncode == 0 and "Node status" in cli.stdout, cli.stdout + cli.stderr
        # The README's Python example, as printed (its HTTP client and its Serve handles), at this port.
        example = readme_python().replace("http://127.0.0.1:8000", f"http://127.0.0.1:{port}")
        driver = subprocess.run([sys.executable, "-c", example], env=user.env, cwd=ROOT, capture_output=True, text=True,
                                timeout=180)
        assert driver.returncode == 0 and driver.stdout.count("'message': 'hi'") == 2, driver.stdout + driver.stderr

        session = state["ray_session_dir"]
        assert (Path(session) / "runtime_resources").is_dir()
        # The models' pip packages: one thin overlay of this install per package list, under the home
        # (the image models and the LLM share one), and no copy of the base virtualenv in Ray's session.
        overlays = [d for d in (home / "envs").iterdir() if (d / ".ready").exists()]
        assert len(overlays) == 2, sorted((home / "envs").iterdir())
        assert not list((Path(session) / "runtime_resources").glob("pip/*/virtualenv"))
        first_token = token.read_text()
        out = user.ok("down")
        assert "stopping the Ray head" in out and "stopping embedded Postgres" in out
        # Nothing of the stack is left: no Postgres/Redis under this HOME, no Ray process of its session.
        assert user.processes() == [] and processes_mentioning(session) == []
        assert listeners(port) == set()
        # Ray keeps every session's runtime_env virtualenvs (GBs); `down` drops the ones it made.
        assert Path(session).is_dir() and not (Path(session) / "runtime_resources").exists()
        assert "nothing to stop" in user.ok("down")
        # The real profile (arbiter on, models scaled to zero until a job needs them): nothing loads.
        # Listening beyond loopback, the API needs a key; the admin key is not shown again.
        cfg["http_options"]["host"] = "0.0.0.0"
        config.write_text(yaml.safe_dump(cfg))
        out = user.ok("up", "--config", str(config), "--num-cpus", "4")
        assert "API auth:       ON" in out and admin_key not in out and str(admin_file) in out
        with Client(f"http://127.0.0.1:{port}", api_key="") as c:
            with pytest.raises(ApiError) as refused:
                c.get(job["job_id"])
            assert refused.value.status == 401
        with Client(f"http://127.0.0.1:{port}", api_key=admin_key) as c:
            assert c.get(job["job_id"])["status"] == "succeeded"  # survived the restart
        # The CLI sends the stack's admin key by itself.
        assert '"succeeded"' in user.ok("--url", f"http://127.0.0.1:{port}", "status", job["job_id"])
        assert token.read_text() == first_token  # kept across `up`s
    finally:
        user.gpu_orch("down")
        config.unlink(missing_ok=True)


@pytest.mark.serve
@pytest.mark.timeout(900)
def test_up_on_the_haproxy_ingress(user):
    """GPU_ORCH_INGRESS=haproxy (docs/operations.md): HAProxy answers on the API's port, and a job
    (one request with Prefer: wait, an event stream) and a UI page go through it; `down` stops it."""
    port = free_port()
    cfg = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    cfg["http_options"] = {"host": "127.0.0.1", "port": port}
    config = user.home.parent / f"{user.home.name}-haproxy_config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    user.env["GPU_ORCH_INGRESS"] = "haproxy"
    try:
        user.ok("up", "--config", str(config), "--num-cpus", "4", timeout=600)  # the real profile: nothing loads
        assert listeners(port) == {"haproxy"}
        with Client(f"http://127.0.0.1:{port}") as c:
            r = c.http.post("/v1/jobs", json={"app_id": "echo", "params": {"message": "via haproxy", "steps": 2}},
                            headers={"Prefer": "wait=30"})
            assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
            assert r.json()["result"]["echo"]["message"] == "via haproxy"
            job_id = c.submit("echo", {"steps": 3, "delay_s": 0.1})["job_id"]
            events = list(c.events(job_id))
            assert events[-1]["event"] == "status" and events[-1]["data"]["status"] == "succeeded", events[-3:]
            page = c.http.get("/ui/admin/", follow_redirects=True)
            assert page.status_code == 200 and "gradio" in page.text.lower()
            assert c.http.get("/no/such/path").status_code == 404
        assert "stopping the Ray head" in user.ok("down")
        assert listeners(port) == set() and user.processes() == []
    finally:
        config.unlink(missing_ok=True)
