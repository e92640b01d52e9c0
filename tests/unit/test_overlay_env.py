"""serve/overlay_env.py: a model's pip packages in a thin virtualenv over the base install (instead
of Ray's copy of the whole base per package list). The overlay imports its own pins first and the
base's packages (this project's editable install included) after; it is built once per key."""

from __future__ import annotations

import json
import logging
import subprocess

from gpu_orchestrator.serve import overlay_env

SPEC = {"packages": ["tabulate==0.8.10"], "pip_install_options": ["--disable-pip-version-check", "--no-compile"]}


def test_a_pip_runtime_env_is_served_by_the_overlay_only_where_the_plugin_is_registered(monkeypatch):
    env = {"pip": {"packages": ["tabulate==0.8.10"], "pip_install_options": ["--no-compile"]}, "env_vars": {"A": "1"}}
    want = {"packages": ["tabulate==0.8.10"], "pip_install_options": ["--no-compile"]}
    assert overlay_env.overlaid(env) == {"env_vars": {"A": "1"}, "overlay_pip": want}
    assert overlay_env.overlaid({"pip": ["x==1"]})["overlay_pip"] == {"packages": ["x==1"], "pip_install_options": []}
    assert overlay_env.overlaid({"env_vars": {}}) == {"env_vars": {}}
    for ray_only in ({"pip": "requirements.txt"}, {"pip": {"packages": ["x"], "pip_check": True}},
                     {"pip": {"packages": ["x"], "pip_version": "==24.0"}}):
        assert overlay_env.overlaid(ray_only) == ray_only  # forms the overlay does not take stay Ray's

    from gpu_orchestrator.serve.app import load_runtime_env

    monkeypatch.delenv(overlay_env.PLUGINS_ENV, raising=False)
    assert load_runtime_env("runtime_envs/whisper.yaml")["pip"]["packages"][0].startswith("openai-whisper")
    monkeypatch.setenv(overlay_env.PLUGINS_ENV, overlay_env.register({})[overlay_env.PLUGINS_ENV])
    served = load_runtime_env("runtime_envs/whisper.yaml")
    assert "pip" not in served and served["overlay_pip"]["packages"][0].startswith("openai-whisper")


def test_register_adds_the_plugin_once_and_can_be_refused(monkeypatch):
    monkeypatch.delenv("GPU_ORCH_OVERLAY_ENVS", raising=False)
    other = json.dumps([{"class": "x.Y"}])
    env = overlay_env.register(overlay_env.register({overlay_env.PLUGINS_ENV: other}))
    assert json.loads(env[overlay_env.PLUGINS_ENV]) == [{"class": "x.Y"}, {"class": overlay_env.CLASS}]
    assert overlay_env.register({"GPU_ORCH_OVERLAY_ENVS": "0"}) == {"GPU_ORCH_OVERLAY_ENVS": "0"}


def test_the_overlay_imports_its_pins_first_and_the_base_install_after(tmp_path):
    env_dir = tmp_path / overlay_env.key(SPEC)
    overlay_env.build(env_dir, SPEC, logging.getLogger("test"))
    overlay_env.build(env_dir, SPEC, logging.getLogger("test"))  # built: a no-op
    py = overlay_env.python_of(env_dir)
    out = subprocess.run([str(py), "-c", "import importlib.metadata as m, sys, torch, ray, gpu_orchestrator, deployments;"
                          "print(m.version('tabulate'), sys.prefix)"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    version, prefix = out.stdout.split()
    assert version == "0.8.10" and prefix == str(env_dir)
    size_mb = sum(f.stat().st_size for f in env_dir.rglob("*") if f.is_file()) / 2**20
    assert size_mb < 20, f"{size_mb:.0f} MB: the overlay copied more than its own packages"


def test_the_key_changes_with_the_packages():
    assert overlay_env.key(SPEC) == overlay_env.key(dict(SPEC))
    assert overlay_env.key(SPEC) != overlay_env.key({**SPEC, "packages": ["tabulate==0.9.0"]})
