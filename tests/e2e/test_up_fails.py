"""A `gpu-orch up` that fails part-way exits non-zero with the reason and leaves no process behind:
it stops what it started (only that), and `gpu-orch down` afterwards finds nothing left."""

from __future__ import annotations

import re

import pytest
import yaml

from gpu_orchestrator.ops import embedded

from tests.helpers import free_port

from .conftest import ROOT, processes_mentioning


def test_ray_cannot_start(user):
    # Ray cannot create its temp dir (a full or read-only disk would do the same): `ray start`
    # fails after the embedded Postgres and Redis are up.
    blocker = user.home.parent / f"{user.home.name}-not-a-dir"
    blocker.write_text("")
    user.env["RAY_TMPDIR"] = str(blocker / "ray")
    try:
        r = user.gpu_orch("up", "--demo", timeout=300)
        assert r.returncode != 0
        assert "starting embedded Postgres" in r.stdout and "starting Ray" in r.stdout
        assert "ray start exited" in r.stderr and "Not a directory" in r.stderr, r.stderr
        assert "up failed: stopping what it started (postgres, redis, ray)" in r.stderr
        assert user.processes() == []
        assert not (user.gpu_home / "state.json").exists()
        assert "nothing to stop" in user.ok("down")

        # Postgres already running (an earlier `up` left it): a failing `up` stops only what it started.
        embedded.start_postgres(user.gpu_home / "postgres")
        r = user.gpu_orch("up", "--demo", timeout=300)
        assert r.returncode != 0 and "up failed: stopping what it started (redis, ray)" in r.stderr, r.stderr
        assert embedded.postgres_pid(user.gpu_home / "postgres") is not None
        assert embedded.redis_pid(user.gpu_home / "redis") is None
        out = user.ok("down")  # still finds the Postgres
        assert "stopping embedded Postgres" in out and user.processes() == []
    finally:
        blocker.unlink()


def test_an_unknown_ingress_is_refused_before_anything_starts(user):
    user.env["GPU_ORCH_INGRESS"] = "nginx"
    r = user.gpu_orch("up", "--demo")
    assert r.returncode != 0 and "GPU_ORCH_INGRESS is 'nginx': it must be one of haproxy, serve" in r.stderr, r.stderr
    assert "starting" not in r.stdout and user.processes() == [] and not (user.gpu_home / "state.json").exists()


@pytest.mark.serve
@pytest.mark.timeout(600)
def test_deploy_fails(user):
    cfg = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    cfg["http_options"] = {"host": "127.0.0.1", "port": free_port()}
    app = next(a for a in cfg["applications"] if a["name"] == "orchestrator")
    app["import_path"] = "serve_apps.no_such_module:build_app"
    config = user.home.parent / f"{user.home.name}-bad_config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    try:
        r = user.gpu_orch("up", "--config", str(config), "--num-cpus", "2", timeout=500)
        assert r.returncode != 0
        assert "deploy failed" in r.stderr and "No module named 'serve_apps.no_such_module'" in r.stderr, r.stderr
        assert "up failed: stopping what it started (postgres, redis, ray)" in r.stderr
        # No Postgres/Redis under this HOME, no Ray process of the session this `up` started.
        log = (user.gpu_home / "ray" / "ray-start.log").read_text()
        session = re.search(r"(/\S+/session_[\w-]+)", log).group(1)
        assert user.processes() == [] and processes_mentioning(session) == []
        assert not (user.gpu_home / "ray" / "head.pid").exists()
        assert "nothing to stop" in user.ok("down")
    finally:
        config.unlink(missing_ok=True)
