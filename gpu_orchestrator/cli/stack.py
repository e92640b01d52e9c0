"""`gpu-orch up`, `down`, `env`: the stack's lifecycle."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import click
import httpx

from ..client import auth_headers
from ..settings import Settings
from .base import APP_NAME, cli


def _ray_cli() -> str:
    exe = Path(sys.executable).parent / "ray"
    return str(exe) if exe.exists() else (shutil.which("ray") or "ray")


def _ray_env(home: Path, *, own_head: bool) -> dict[str, str]:
    """Environment of the local Ray head and of our driver."""
    from ..ops import ray_auth

    extra = ray_auth.stack_env(home) if own_head else {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
    # Faster autoscaling metric pushes: scale-from-zero without waiting out a 10 s interval.
    extra["RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S"] = os.environ.get(
        "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "0.5")
    if own_head:  # a single-node head has no other node to drain to: stop at once on SIGTERM
        extra["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
        # An idle stack's CPU (bench/idle.py): every Serve replica exports its metrics each 100 ms by
        # default and the controller loops each 100 ms; Prometheus scrapes every 15 s or so, and a
        # scaling decision taking 0.4 s more is nothing beside a model's load. Ray's log monitor looks
        # for new log files twice a second (for drivers that stream worker logs; ours do not).
        for var, value in IDLE_FRIENDLY.items():
            extra[var] = os.environ.get(var, value)
    return extra


IDLE_FRIENDLY = {"RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000", "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
                 "LOG_NAME_UPDATE_INTERVAL_S": "5"}


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
    from ..ops import stack

    s = Settings()
    home = s.home
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o755)  # the embedded Postgres runs as its own system user when we are root; secrets inside are 600
    state = stack.load_state(home)
    started: list[str] = []  # services this run started, in order: the ones a failure stops again
    try:
        _up(s, state, started, config_path, num_cpus, demo, host)
    except BaseException as e:
        try:
            _roll_back(home, state, started)
        except Exception as rb:  # say so, but the error that made `up` fail is the one to show
            click.echo(f"could not stop everything ({rb}): run `gpu-orch down`", err=True)
        if isinstance(e, (click.ClickException, SystemExit)):
            raise
        if isinstance(e, KeyboardInterrupt):
            raise click.Abort() from None
        raise click.ClickException(str(e) or type(e).__name__) from e


def _up(s: Settings, state: dict[str, Any], started: list[str], config_path: str, num_cpus: int | None, demo: bool,
        listen: str | None = None) -> None:
    from ..ops import embedded, ray_auth, stack

    home = s.home
    address = os.environ.get("RAY_ADDRESS")
    own_head = not address
    # Checks first, so that a stack that cannot start starts nothing.
    if address and os.environ.get("RAY_AUTH_MODE", "").lower() != "disabled" and ray_auth.external_token_source() is None:
        raise click.ClickException(ray_auth.missing_token_message(address))
    head = stack.ray_head(home) if own_head else None  # (pid, port) of the head an earlier `up` started
    if own_head and head is None:
        for port, var, what in ((s.ray_port, "GPU_ORCH_RAY_PORT", "Ray's port"),
                                (s.ray_dashboard_port, "GPU_ORCH_RAY_DASHBOARD_PORT", "the Ray dashboard's port")):
            if stack.port_in_use(port):
                raise click.ClickException(
                    f"{what} {port} is in use (another Ray head, or another program). Stop it, set {var} to a "
                    "free port, or set RAY_ADDRESS to deploy to a running Ray cluster.")

    def record(**fields: Any) -> None:
        state.update(fields)
        stack.save_state(home, state)

    if s.database_url:
        db = s.database_url
    else:
        pg_dir = home / "postgres"
        if embedded.postgres_pid(pg_dir) is None:
            click.echo(f"starting embedded Postgres (data: {pg_dir}) ...")
            started.append("postgres")
        else:
            click.echo(f"embedded Postgres already running (data: {pg_dir})")
        record(embedded_postgres=str(pg_dir))  # before it starts: a crash mid-start still leaves it findable
        db = embedded.start_postgres(pg_dir)
        record(database_url=db)
    if s.redis_url:
        redis_url = s.redis_url
    else:
        redis_dir = home / "redis"
        if embedded.redis_pid(redis_dir) is None:
            click.echo(f"starting embedded Redis (data: {redis_dir}, maxmemory {s.redis_maxmemory}) ...")
            started.append("redis")
        else:
            click.echo(f"embedded Redis already running (data: {redis_dir}, maxmemory now {s.redis_maxmemory})")
        record(embedded_redis=str(redis_dir))
        redis_url = embedded.start_redis(redis_dir, maxmemory=s.redis_maxmemory)
        record(redis_url=redis_url)
    click.echo("migrating the job store ...")
    from gpu_orchestrator.store.postgres import PostgresJobStore

    PostgresJobStore.connect(db).close()
    from .keys import ADMIN_KEY_FILE, bootstrap_admin, stack_api_key

    admin_token = bootstrap_admin(db, home)  # the first up of this home: shown once, below

    env = _ray_env(home, own_head=own_head)
    dashboard_port = s.ray_dashboard_port
    if own_head:
        ray_auth.ensure_token(home)
        if head is not None:
            head_pid, port = head
            dashboard_port = state.get("ray_dashboard_port") or dashboard_port
            address = f"127.0.0.1:{port}"
            click.echo(f"Ray head already running at {address}")
        else:
            address = f"127.0.0.1:{s.ray_port}"
            cpus = num_cpus or max(8, os.cpu_count() or 1)
            click.echo(f"starting Ray (head at {address}, {cpus} logical CPUs) ...")
            started.append("ray")
            cmd = [_ray_cli(), "start", "--head", "--block", f"--port={s.ray_port}", f"--num-cpus={cpus}",
                   "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--disable-usage-stats"]
            head_pid = stack.start_ray_head(home, cmd, port=s.ray_port, env=ray_auth.child_env(env))
        record(ray_head_pid=head_pid, ray_address=address, ray_dashboard_port=dashboard_port)
    else:
        token_file = os.environ.get("RAY_AUTH_TOKEN_PATH")
        record(ray_address=address, ray_head_pid=None,
               ray_auth_token_path=str(Path(token_file).expanduser().resolve()) if token_file else None)
    ray_auth.apply(env)

    # Ray lives at the edge (gpu_orchestrator.serve): imported only by the commands that deploy.
    from gpu_orchestrator.serve.deploy import connect, deploy, load_config, ray_session_dir, with_env

    try:
        connect(address)
    except Exception as e:
        raise click.ClickException(
            f"could not connect to Ray at {address}: {type(e).__name__}: {e}"
            + ("" if own_head else "\n(RAY_ADDRESS is set: is the cluster up, and is its auth token the one in "
               "RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH / ~/.ray/auth_token?)")) from None

    if own_head:
        record(ray_session_dir=str(ray_session_dir() or ""))

    cfg = with_env(load_config(config_path), {"DATABASE_URL": db, "REDIS_URL": redis_url, "GPU_ORCH_HOME": str(home)},
                   APP_NAME)
    if demo:
        app = next(a for a in cfg["applications"] if a["name"] == APP_NAME)
        app.setdefault("args", {})["profile"] = "demo"
    if listen:
        cfg.setdefault("http_options", {})["host"] = listen
    http = cfg.get("http_options", {})
    host = http.get("host", "127.0.0.1")
    from gpu_orchestrator.core.keys import auth_required

    router_args = (next(a for a in cfg["applications"] if a["name"] == APP_NAME).get("args") or {}).get("router") or {}
    auth_on = auth_required(router_args.get("auth", "auto"), host)
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{http.get('port', 8000)}"
    # The UIs talk to the router through the Serve proxy on their own node (every node runs one).
    uis = [a for a in cfg["applications"] if a["name"] != APP_NAME]
    for app in uis:
        cfg = with_env(cfg, {"GPU_ORCH_URL": base}, app["name"])
    from gpu_orchestrator.serve.warm import model_envs, warm
    from gradio_uis.serve import page_paths

    arbiter_on, envs = model_envs(next(a for a in cfg["applications"] if a["name"] == APP_NAME).get("args") or {},
                                  Path(config_path).resolve().parent)
    # The demo's models start at zero (its arbiter): their environments now, on this one machine, not
    # on their first jobs. (A real profile's GPU replicas may run on other nodes: nothing to warm here.)
    warmed = demo and arbiter_on
    if warmed:
        warm(envs, say=lambda line: click.echo(f"  {line}"))
    click.echo(f"deploying {config_path}{' (demo profile: tiny untrained models)' if demo else ''} ... "
               + ("" if warmed else "(the first deploy builds each model's runtime_env: a few minutes)"))
    record(serve_apps=[a["name"] for a in cfg["applications"]])
    deploy(cfg, on_change=lambda line: click.echo(f"  {line}"))
    record(url=base)
    if own_head:
        token = ray_auth.token_path(home)
        ray_lines = (f"  Ray dashboard:  http://127.0.0.1:{dashboard_port}   (it asks for the token in {token})\n"
                     f"  Ray CLI:        export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={token}   "
                     "(or: eval \"$(gpu-orch env)\"), then `ray status`, `serve status`\n")
    else:
        ray_lines = f"  Ray cluster:    {address}\n"
    click.echo(
        f"\nGPU Orchestrator is up.\n"
        f"  API:            {base}/v1/jobs   (docs: {base}/docs)\n"
        + "".join(f"  UI:             {base}{path}\n" for a in uis if a.get("route_prefix") for path in page_paths(a))
        + _auth_lines(auth_on, host, admin_token, home / ADMIN_KEY_FILE)
        + ray_lines + _cloud_lines(base, stack_api_key()) +
        f"  Metrics:        Ray's Prometheus endpoint (gpu_orch_* series)\n"
        f"  Data:           {home}\n"
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


_STATE_KEYS = {"ray": ("ray_head_pid", "ray_address", "ray_session_dir", "ray_dashboard_port", "url", "serve_apps"),
               "redis": ("embedded_redis", "redis_url"), "postgres": ("embedded_postgres", "database_url")}


def _roll_back(home: Path, state: dict[str, Any], started: list[str]) -> None:
    """After a failed `up`: stop what this run started (not what an earlier `up` left running)."""
    from ..ops import stack

    if not started:
        return
    click.echo(f"up failed: stopping what it started ({', '.join(started)}) ...", err=True)
    if "ray" in sys.modules:
        from gpu_orchestrator.serve.deploy import disconnect

        disconnect()
    stack.stop(home, started, state, say=lambda msg: click.echo(msg, err=True))
    if "ray" in started:
        from gpu_orchestrator.serve.deploy import drop_runtime_envs

        drop_runtime_envs(state.get("ray_session_dir"))
    for name in started:
        for key in _STATE_KEYS[name]:
            state.pop(key, None)
    if stack.running(home, state):
        stack.save_state(home, state)
    else:
        stack.state_path(home).unlink(missing_ok=True)


@cli.command()
def down() -> None:
    """Stop what `up` started (the app, a local Ray head, embedded Postgres/Redis). Data is kept.

    Finds them from GPU_ORCH_HOME's state.json and, without it, from their pidfiles there."""
    from ..ops import ray_auth, stack

    s = Settings()
    home = s.home
    state = stack.load_state(home)
    found = stack.running(home, state)
    if state.get("ray_started") and not state.get("ray_head_pid") and "ray" not in found:
        click.echo("this stack's Ray head was started by an older gpu-orch: stop it with `ray stop` "
                   "(which stops every Ray instance on this machine)", err=True)
    deleted_app = False
    if state.get("ray_address") and ("ray" in found or not state.get("ray_head_pid")):
        try:  # remove the app first, so its replicas shut down gracefully
            ray_auth.apply(ray_auth.state_env(home, state))
            from gpu_orchestrator.serve.deploy import delete_app

            delete_app(state["ray_address"], *(state.get("serve_apps") or [APP_NAME]))
            deleted_app = True
        except Exception as e:
            click.echo(f"could not delete the Serve app: {e}", err=True)
    stopped = stack.stop(home, state=state, say=click.echo)
    if "ray" in stopped:
        from gpu_orchestrator.serve.deploy import drop_runtime_envs

        drop_runtime_envs(state.get("ray_session_dir"))  # GBs of per-model virtualenvs, rebuilt on the next up
    stack.state_path(home).unlink(missing_ok=True)
    if not stopped and not deleted_app:
        click.echo(f"nothing to stop: no service of {home} is running")
    else:
        click.echo(f"stopped; data kept in {home}")


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
