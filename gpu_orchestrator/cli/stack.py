"""`gpu-orch up`, `down`, `env`: the stack's lifecycle (the work is ops/lifecycle.py's; these print)."""

from __future__ import annotations

from pathlib import Path

import click
import httpx

from ..client import auth_headers
from ..settings import Settings
from .base import cli


@cli.command()
@click.option("--config", "config_path", default="serve_config.yaml", show_default=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--num-cpus", type=int, default=None, help="logical CPUs for a local Ray head (default: max(8, cores))")
@click.option("--demo", is_flag=True, help="demo profile: tiny untrained versions of every model, built locally "
              "(CPU is enough, nothing is downloaded; outputs are noise and labelled so)")
@click.option("--host", default=None, help="the address the API listens on (default: the config's http_options.host); "
              "beyond 127.0.0.1, API keys are required")
def up(config_path: str, num_cpus: int | None, demo: bool, host: str | None) -> None:
    """Start everything: Postgres/Redis (embedded when DATABASE_URL/REDIS_URL are unset), Ray, the app.

    If a step fails, what this run started is stopped again and the error shown."""
    from ..ops import lifecycle
    from ..ops.admin_key import ADMIN_KEY_FILE, stack_api_key

    try:
        r = lifecycle.up(config_path, num_cpus=num_cpus, demo=demo, host=host, say=click.echo,
                         warn=lambda line: click.echo(line, err=True))
    except KeyboardInterrupt:
        raise click.Abort() from None
    except (click.ClickException, SystemExit):
        raise
    except Exception as e:
        raise click.ClickException(str(e) or type(e).__name__) from e
    if r.own_head:
        from ..ops import ray_auth

        token = ray_auth.token_path(r.home)
        ray_lines = (f"  Ray dashboard:  http://127.0.0.1:{r.dashboard_port}   (it asks for the token in {token})\n"
                     f"  Ray CLI:        export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={token}   "
                     "(or: eval \"$(gpu-orch env)\"), then `ray status`, `serve status`\n")
    else:
        ray_lines = f"  Ray cluster:    {r.address}\n"
    base = r.base
    click.echo(
        f"\nGPU Orchestrator is up.\n"
        f"  API:            {base}/v1/jobs   (docs: {base}/docs)\n"
        + "".join(f"  UI:             {base}{path}\n" for path in r.ui_paths)
        + _auth_lines(r.auth_on, r.host, r.admin_token, r.home / ADMIN_KEY_FILE)
        + ray_lines + _cloud_lines(base, stack_api_key()) +
        f"  Metrics:        Ray's Prometheus endpoint (gpu_orch_* series)\n"
        f"  Data:           {r.home}\n"
        f"  Profile:        {'demo (tiny UNTRAINED models: outputs are noise)' if demo else config_path}\n"
        + ("Try: gpu-orch submit sdxl -p prompt='a red fox' -p width=256 -p height=256 --wait\n"
           "     gpu-orch submit chat -p messages='[{\"role\":\"user\",\"content\":\"hi\"}]' --wait"
           if demo else "Try: gpu-orch submit echo -p message=hello --wait")
    )


def _auth_lines(auth_on: bool, host: str, admin_token: str | None, key_file: Path) -> str:
    if auth_on:
        line = (f"  API auth:       ON (listening on {host}): every request needs an API key "
                "(Authorization: Bearer; `gpu-orch keys create`)\n")
    else:
        line = (f"  API auth:       OFF: open to anyone who can reach {host} (the local demo). Listening beyond "
                "127.0.0.1 (http_options.host) turns keys on\n")
    if admin_token:
        return line + (f"  Admin API key:  {admin_token}\n"
                       f"                  (shown this once; kept in {key_file}, mode 600, which the gpu-orch CLI uses)\n")
    return line + f"  Admin API key:  in {key_file} (mode 600)\n"


def _cloud_lines(base: str, api_key: str | None = None) -> str:
    """The cloud backends the config names, and whether each can be used (a missing token said at start)."""
    try:
        cloud = httpx.get(f"{base}/v1/workers", timeout=10, headers=auth_headers(api_key or "")).json().get("cloud") or []
    except Exception:  # the stack is up; this is a courtesy
        return ""
    return "".join(f"  Cloud:          {c['backend']} " + ("ready\n" if c["available"] else f"UNAVAILABLE: {c['reason']}\n")
                   for c in cloud)


@cli.command()
def down() -> None:
    """Stop what `up` started (the app, a local Ray head, embedded Postgres/Redis). Data is kept.

    Finds them from GPU_ORCH_HOME's state.json and, without it, from their pidfiles there."""
    from ..ops import lifecycle

    if lifecycle.down(say=click.echo, warn=lambda line: click.echo(line, err=True)):
        click.echo(f"stopped; data kept in {Settings().home}")
    else:
        click.echo(f"nothing to stop: no service of {Settings().home} is running")


@cli.command("env")
def env_cmd() -> None:
    """Shell exports that let the `ray` and `serve` CLIs reach the stack: eval "$(gpu-orch env)"."""
    import shlex

    from ..ops import ray_auth, stack

    home = Settings().home
    state = stack.load_state(home)
    env = ray_auth.state_env(home, state) if state.get("ray_address") else ray_auth.stack_env(home)
    if state.get("ray_address"):
        click.echo(f"# Ray at {state['ray_address']}")
    if "RAY_AUTH_TOKEN_PATH" in env:
        click.echo("unset RAY_AUTH_TOKEN")
    for k, v in env.items():
        click.echo(f"export {k}={shlex.quote(v)}")
