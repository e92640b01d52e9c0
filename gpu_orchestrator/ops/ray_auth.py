"""The Ray auth token of the stack `gpu-orch up` starts, and how every client finds it.

Ray 2.60 clusters run with token authentication: `ray start` refuses to start without a token and
clients must present the same one. Ray looks for it in RAY_AUTH_TOKEN (the value), then
RAY_AUTH_TOKEN_PATH (a file), then ~/.ray/auth_token. `gpu-orch up` owns the token of the head it
starts: it keeps it in GPU_ORCH_HOME/ray_auth_token (mode 600) and hands its path to `ray start`
and to every client through RAY_AUTH_TOKEN_PATH, so nothing depends on what HOME holds.

Tests and benches that talk to a running stack through Ray call `connect()`:

    from gpu_orchestrator.ops.ray_auth import connect
    connect()            # reads GPU_ORCH_HOME/state.json, sets the token env, ray.init(address=...)

The `ray` / `serve` CLIs: `eval "$(gpu-orch env)"` (the same variables as shell exports).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

TOKEN_FILE = "ray_auth_token"
ENV_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def token_path(home: Path) -> Path:
    return Path(home) / TOKEN_FILE


def ensure_token(home: Path) -> Path:
    """Create the stack's token when missing (32 random bytes as hex, as Ray generates); mode 600."""
    path = token_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_text().strip():
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return path
    from .stack import write_private

    write_private(path, secrets.token_hex(32))
    return path


def stack_env(home: Path) -> dict[str, str]:
    """Environment for the local head `gpu-orch up` started and for its clients."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path(home))}


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """A copy of os.environ with `extra`; a RAY_AUTH_TOKEN from outside is dropped when extra names
    a token file, since Ray would prefer it over that file."""
    env = dict(os.environ)
    if "RAY_AUTH_TOKEN_PATH" in extra:
        env.pop("RAY_AUTH_TOKEN", None)
    env.update(extra)
    return env


def apply(extra: dict[str, str]) -> None:
    """Set `extra` in this process's environment before ray.init (also when Ray is already imported:
    Ray caches its config and token when first read)."""
    if "RAY_AUTH_TOKEN_PATH" in extra:
        os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ.update(extra)
    try:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):  # a Ray without these: it reads the env when imported
        pass


def external_token_source() -> str | None:
    """Where a token for a cluster gpu-orch did not start would come from (None: nowhere)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return f"RAY_AUTH_TOKEN_PATH={path}" if Path(path).expanduser().is_file() else None
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if default.is_file() else None


def missing_token_message(address: str) -> str:
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    found = f"RAY_AUTH_TOKEN_PATH={path} is not a file" if path else (
        f"RAY_AUTH_TOKEN and RAY_AUTH_TOKEN_PATH are unset and {Path.home() / '.ray' / 'auth_token'} does not exist")
    return (
        f"no Ray auth token for the cluster at RAY_ADDRESS={address} ({found}).\n"
        "Ray clusters use token authentication: print the cluster's token on its head node with "
        "`ray get-auth-token`, then either\n"
        "  export RAY_AUTH_TOKEN=<token>                      (the token itself), or\n"
        "  export RAY_AUTH_TOKEN_PATH=/path/to/token_file     (a file holding it, mode 600), or\n"
        "  save it as ~/.ray/auth_token\n"
        "and run `gpu-orch up` again. A cluster started without authentication: export RAY_AUTH_MODE=disabled."
    )


def state_env(home: Path, state: dict[str, Any]) -> dict[str, str]:
    """The auth environment for the stack described by state.json."""
    if state.get("ray_head_pid"):
        return stack_env(home)
    env = {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
    if state.get("ray_auth_token_path") and not os.environ.get("RAY_AUTH_TOKEN"):
        env["RAY_AUTH_TOKEN_PATH"] = state["ray_auth_token_path"]
    return env


def connect(home: Path | None = None, **init_kwargs: Any) -> str:
    """ray.init() to the stack `gpu-orch up` runs under home (default GPU_ORCH_HOME), with its
    token. Returns the Ray address. Sets RAY_AUTH_* in this process's environment."""
    import ray

    from . import stack
    from ..settings import Settings

    home = Path(home) if home is not None else Settings().home
    state = stack.load_state(home)
    if not state.get("ray_address"):
        raise RuntimeError(f"no running stack under {home} (no ray_address in {stack.state_path(home)}): run `gpu-orch up`")
    apply(state_env(home, state))
    init_kwargs.setdefault("log_to_driver", False)
    init_kwargs.setdefault("logging_level", "ERROR")
    ray.init(address=state["ray_address"], **init_kwargs)
    return state["ray_address"]
