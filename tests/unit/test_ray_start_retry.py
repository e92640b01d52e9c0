"""`gpu-orch up` starts the Ray head once more when Ray ran out of its own fixed 30 s wait for the
raylet (a busy machine), and not for any other failure. The command is a script standing in for
`ray start --head --block` that says what Ray says."""

from __future__ import annotations

import os
import signal
import stat

import pytest

from gpu_orchestrator.ops import stack

SLOW = "Exception: The current node timed out during startup. This could happen because some of the raylet failed"


def script(tmp_path, first: str, first_rc: int) -> list[str]:
    """First run: prints `first`, exits `first_rc`; later runs: start and block, as `ray start --block`."""
    path = tmp_path / "fake-ray-start"
    path.write_text(f"""#!/bin/bash
n=$(cat {tmp_path}/runs 2>/dev/null || echo 0); echo $((n + 1)) > {tmp_path}/runs
if [ "$n" = 0 ]; then echo "{first}"; exit {first_rc}; fi
echo "Ray runtime started."; exec sleep 60
""")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return [str(path)]


def test_a_raylet_slow_to_register_gets_a_second_start(tmp_path, capsys):
    pid = stack.start_ray_head(tmp_path, script(tmp_path, SLOW, 1), port=1, env=dict(os.environ), timeout_s=20)
    try:
        assert (tmp_path / "runs").read_text().strip() == "2"
        assert "starting it again" in capsys.readouterr().err
    finally:
        os.kill(pid, signal.SIGKILL)


def test_any_other_failure_is_said_at_once(tmp_path):
    with pytest.raises(RuntimeError, match="exited with 1: port 6379 is already in use"):
        stack.start_ray_head(tmp_path, script(tmp_path, "port 6379 is already in use", 1), port=1, env=dict(os.environ),
                             timeout_s=20)
    assert (tmp_path / "runs").read_text().strip() == "1"
