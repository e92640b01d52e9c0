"""A Ray runtime_env plugin, `overlay_pip`: a model's pip packages in a thin virtualenv layered over
the base install, instead of Ray's `pip`, which copies the whole base virtualenv (2 GB with torch)
for every distinct package list before installing into the copy.

The overlay is an empty virtualenv whose site-packages adds the base install's after its own (a
.pth file), so the model's process imports its pinned packages first and everything else (torch,
Ray, this project) from the base; pip installs only what the base lacks or pins differently. It is
built once per (package list, pip options, base install's packages and Python) under
$GPU_ORCH_HOME/envs and reused by later Ray sessions on the node; a change to the base install
makes a new one. `gpu-orch up` registers the plugin on the Ray head it starts
(RAY_RUNTIME_ENV_PLUGINS); where it is registered, the models' `pip:` runtime_envs are served by it
(serve/app.py), and elsewhere (a cluster started without it, KubeRay) Ray's `pip` builds them as
before. Every node that runs models needs it registered.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import site
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

NAME = "overlay_pip"
CLASS = "gpu_orchestrator.serve.overlay_plugin.OverlayPip"
PLUGINS_ENV = "RAY_RUNTIME_ENV_PLUGINS"
READY = ".ready"


def registered() -> bool:
    """Whether this process's Ray (the head it started, or the one it runs in) loads the plugin."""
    return CLASS in os.environ.get(PLUGINS_ENV, "")


def register(env: dict[str, str]) -> dict[str, str]:
    """`env` with the plugin added to RAY_RUNTIME_ENV_PLUGINS (for a `ray start` or ray.init), unless
    GPU_ORCH_OVERLAY_ENVS=0 asks for Ray's own `pip` (a full copy of the base install per model)."""
    if env.get("GPU_ORCH_OVERLAY_ENVS", os.environ.get("GPU_ORCH_OVERLAY_ENVS", "1")) == "0":
        return env
    plugins = json.loads(env.get(PLUGINS_ENV) or "[]")
    if not any(p.get("class") == CLASS for p in plugins):
        plugins.append({"class": CLASS})
    return {**env, PLUGINS_ENV: json.dumps(plugins)}


def overlaid(runtime_env: dict[str, Any]) -> dict[str, Any]:
    """A runtime_env's `pip` field served by the overlay plugin (its packages and options as given).
    Forms the overlay does not take (a requirements file's path, pip_version, pip_check) stay Ray's."""
    pip = runtime_env.get("pip")
    if pip is None or isinstance(pip, str):
        return runtime_env
    spec = {"packages": list(pip)} if isinstance(pip, list) else dict(pip)
    if spec.get("pip_version") or spec.get("pip_check"):
        return runtime_env
    out = {k: v for k, v in runtime_env.items() if k != "pip"}
    out[NAME] = {"packages": list(spec.get("packages") or []), "pip_install_options": list(spec.get("pip_install_options") or [])}
    return out


def envs_root() -> Path:
    return Path(os.environ.get("GPU_ORCH_HOME") or Path.home() / ".gpu-orch") / "envs"


def base_site_dirs() -> list[str]:
    return [d for d in site.getsitepackages() if os.path.isdir(d)]


LAYOUT = 1  # what build() makes: a change to it makes new overlays, not reuse of old ones


def _base() -> str:
    """The base install this process sees (read again after BASE_TTL_S: an upgrade under a running
    head makes new overlays)."""
    now = time.monotonic()
    if _base_cache[0] is None or now - _base_cache[1] > BASE_TTL_S:
        import importlib.metadata

        dists = sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions() if d.metadata["Name"])
        _base_cache[:] = [json.dumps({"python": sys.version, "prefix": sys.prefix, "base": dists, "layout": LAYOUT}), now]
    return _base_cache[0]


BASE_TTL_S = 60.0
_base_cache: list[Any] = [None, 0.0]


def key(spec: dict[str, Any]) -> str:
    """Names the overlay: its packages and options, and the base install it sits on."""
    return hashlib.sha256((json.dumps(spec, sort_keys=True) + _base()).encode()).hexdigest()[:20]


def python_of(env_dir: Path) -> Path:
    return env_dir / "bin" / "python"


def ready(env_dir: Path) -> bool:
    return (env_dir / READY).exists()


def build(env_dir: Path, spec: dict[str, Any], log: Any) -> None:
    """Make the overlay at env_dir (once: a file lock keeps two builders of one key apart)."""
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(env_dir.with_name(env_dir.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready(env_dir):
            return
        shutil.rmtree(env_dir, ignore_errors=True)  # what a builder that died left
        # The builders' children hold the lock too (pass_fds): a pip that outlives a killed agent
        # keeps the next builder out until it is done, instead of writing into its fresh tree.
        held = {"pass_fds": (lock.fileno(),)}
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, capture_output=True, **held)
        py = python_of(env_dir)
        (own,) = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                check=True, capture_output=True, text=True).stdout.split()
        # addsitedir, not a bare path: the base's own .pth files (editable installs) apply too.
        Path(own, "_gpu_orch_base.pth").write_text(
            "".join(f"import site; site.addsitedir({d!r})\n" for d in base_site_dirs()))
        packages = list(spec.get("packages") or [])
        if packages:
            req = env_dir / "requirements.txt"
            req.write_text("\n".join(packages) + "\n")
            cmd = [sys.executable, "-m", "pip", "--python", str(py), "install", "-r", str(req),
                   *spec.get("pip_install_options", [])]
            log.info("overlay_pip: %s", " ".join(cmd))
            r = subprocess.run(cmd, capture_output=True, text=True, **held)
            log.info("%s", r.stdout[-4000:])
            if r.returncode != 0:
                raise RuntimeError(f"pip install failed for {packages}: {(r.stderr or r.stdout)[-2000:]}")
        (env_dir / READY).touch()
