"""A stopped Ray session's runtime_env virtualenvs (GBs of clones) are deleted: at once by
`gpu-orch down`, or handed to a process of its own by the test session's teardown."""

from __future__ import annotations

from gpu_orchestrator.serve.deploy import drop_runtime_envs
from tests.helpers import wait_for


def _session(tmp_path):
    env = tmp_path / "runtime_resources" / "pip" / "abc" / "virtualenv" / "lib"
    env.mkdir(parents=True)
    (env / "torch.so").write_bytes(b"x" * 1024)
    return tmp_path


def test_drop_waits_by_default(tmp_path):
    drop_runtime_envs(_session(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_drop_in_the_background_frees_the_path_at_once_and_deletes_it_soon(tmp_path):
    drop_runtime_envs(_session(tmp_path), wait=False)
    assert not (tmp_path / "runtime_resources").exists()
    wait_for(lambda: list(tmp_path.iterdir()) == [], "the dropped virtualenvs deleted", 10)


def test_nothing_to_drop_is_fine(tmp_path):
    drop_runtime_envs(tmp_path, wait=False)
    drop_runtime_envs(None)
    assert list(tmp_path.iterdir()) == []
