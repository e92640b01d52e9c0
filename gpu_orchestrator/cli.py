"""`gpu-orch`: start/stop the stack and talk to the router.

    gpu-orch up                         # Ray + embedded Postgres/Redis (if URLs unset) + deploy
    gpu-orch submit echo -p message=hi --wait
    gpu-orch status JOB_ID | jobs | cancel JOB_ID | apps | workers
    gpu-orch import-seed config/apps.yaml
    gpu-orch new-app NAME --task image|audio|text|chat   # scaffold a model app (module, runtime_env, config, test)
    gpu-orch costs | prune --older-than 30d [--dry-run]
    gpu-orch keys create --name alice --scopes submit,read [--apps sdxl] [--quota-jobs-per-min 60]
    gpu-orch render rayservice          # deploy/kuberay/rayservice.yaml from serve_config.yaml
    eval "$(gpu-orch env)"              # the `ray`/`serve` CLIs: the stack's Ray auth token
    gpu-orch down
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import httpx
import yaml

from .client import DEFAULT_URL, TERMINAL, ApiError, Client, auth_headers
from .settings import Settings

APP_NAME = "orchestrator"


def _client(ctx: click.Context) -> Client:
    from .cli_keys import stack_api_key

    return Client(ctx.obj["url"], api_key=ctx.obj.get("api_key") or stack_api_key(ctx.obj["url"]))


def _print(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


@click.group()
@click.option("--url", envvar="GPU_ORCH_URL", default=DEFAULT_URL, show_default=True, help="router base URL")
@click.option("--api-key", envvar="GPU_ORCH_API_KEY", default=None,
              help="API key (default: the stack's admin key that `gpu-orch up` stored)")
@click.pass_context
def cli(ctx: click.Context, url: str, api_key: str | None) -> None:
    """GPU Orchestrator: many AI models on shared GPUs."""
    ctx.ensure_object(dict)
    ctx.obj["url"] = url
    ctx.obj["api_key"] = api_key


def main() -> None:
    try:
        cli(obj={})
    except ApiError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)


# -- stack lifecycle --------------------------------------------------------------------------------


def _ray_cli() -> str:
    exe = Path(sys.executable).parent / "ray"
    return str(exe) if exe.exists() else (shutil.which("ray") or "ray")


def _ray_env(home: Path, *, own_head: bool) -> dict[str, str]:
    """Environment of the local Ray head and of our driver."""
    from . import ray_auth

    extra = ray_auth.stack_env(home) if own_head else {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
    # Faster autoscaling metric pushes: scale-from-zero without waiting out a 10 s interval.
    extra["RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S"] = os.environ.get(
        "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "0.5")
    if own_head:  # a single-node head has no other node to drain to: stop at once on SIGTERM
        extra["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    return extra


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
    from . import stack

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
    from . import embedded, ray_auth, stack

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
    from .cli_keys import ADMIN_KEY_FILE, bootstrap_admin, stack_api_key

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
    click.echo(f"deploying {config_path}{' (demo profile: tiny untrained models)' if demo else ''} ... "
               "(the first deploy builds each model's runtime_env: a few minutes)")
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
        + "".join(f"  UI:             {base}{a['route_prefix']}/\n" for a in uis if a.get("route_prefix"))
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
    from . import stack

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
    from . import ray_auth, stack

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

    from . import ray_auth, stack

    home = Settings().home
    state = stack.load_state(home)
    env = ray_auth.state_env(home, state) if state.get("ray_address") else ray_auth.stack_env(home)
    if state.get("ray_address"):
        click.echo(f"# Ray at {state['ray_address']}")
    if "RAY_AUTH_TOKEN_PATH" in env:
        click.echo("unset RAY_AUTH_TOKEN")
    for k, v in env.items():
        click.echo(f"export {k}={shlex.quote(v)}")


# -- jobs -----------------------------------------------------------------------------------------


def _parse_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="-p/--param")
        # Values are sent as strings unless they are JSON literals; the router coerces by schema.
        try:
            out[key] = json.loads(value) if value[:1] in "[{\"" or value in ("true", "false", "null") else value
        except json.JSONDecodeError:
            out[key] = value
    return out


@cli.command()
@click.argument("app_id")
@click.option("-p", "--param", "params", multiple=True, help="key=value (repeatable)")
@click.option("--priority", type=int, default=0, show_default=True)
@click.option("--idempotency-key", default=None)
@click.option("-f", "--file", "files", multiple=True, help="name=path: upload a local file for a file parameter (repeatable)")
@click.option("--wait", is_flag=True, help="follow progress, then print the result")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="with --wait: save the result's images here")
@click.pass_context
def submit(ctx: click.Context, app_id: str, params: tuple[str, ...], files: tuple[str, ...], priority: int,
           idempotency_key: str | None, wait: bool, out_dir: str | None) -> None:
    """Submit a job to APP_ID."""
    with _client(ctx) as c:
        p = _parse_params(params)
        for pair in files:
            name, sep, path = pair.partition("=")
            if not sep or not name or not Path(path).is_file():
                raise click.BadParameter(f"{pair!r} is not name=path of an existing file", param_hint="-f/--file")
            p[name] = c.upload(path)
        job = c.submit(app_id, p, priority=priority, idempotency_key=idempotency_key)
        if not wait:
            _print(job)
            return
        click.echo(f"job {job['job_id']} queued", err=True)
        final = _follow(c, job["job_id"])
        _print(final)
        if final["status"] == "succeeded" and out_dir:
            _save_images(c, final, Path(out_dir))
        if final["status"] != "succeeded":
            sys.exit(2)


def _save_images(c: Client, job: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for n, img in enumerate((job.get("result") or {}).get("images", [])):
        path = out_dir / f"{job['job_id'][:8]}-{n}.png"
        path.write_bytes(c.download(img["url"]))
        click.echo(f"saved {path}", err=True)


def _follow(c: Client, job_id: str) -> dict[str, Any]:
    from tqdm import tqdm

    bar = None
    streaming = False  # a chat model's text is being printed: end the line before a status line

    def say(msg: str) -> None:
        nonlocal streaming
        if streaming:
            click.echo("", err=True)
            streaming = False
        if bar is not None:
            bar.write(msg, file=sys.stderr)
        else:
            click.echo(msg, err=True)

    try:
        for ev in c.events(job_id):
            data = ev["data"]
            total = data.get("total") or data.get("steps")
            if ev.get("event") == "progress" and total:
                if bar is None:
                    bar = tqdm(total=total, desc=job_id[:8], unit="step", file=sys.stderr)
                bar.n = data.get("step", bar.n)
                bar.refresh()
            elif ev.get("event") == "progress" and "token" in data:
                click.echo(data["token"], nl=False, err=True)  # a chat model's text as it streams
                streaming = True
            elif ev.get("event") == "progress" and "stage" in data:
                say(f"stage: {data['stage']}")
            elif ev.get("event") == "gap":
                say("event stream was unavailable for a while: some progress events may be missing")
            elif ev.get("event") == "status":
                say(f"status: {data['status']}" + (f" (attempt {data['attempt']})" if data.get("attempt") else ""))
                if data["status"] in TERMINAL:
                    break
    finally:
        if bar is not None:
            bar.close()
    return c.wait(job_id)


@cli.command()
@click.argument("job_id")
@click.pass_context
def status(ctx: click.Context, job_id: str) -> None:
    """Show one job."""
    with _client(ctx) as c:
        _print(c.get(job_id))


@cli.command()
@click.option("--app", "app_id", default=None)
@click.option("--status", "status_", default=None)
@click.option("--limit", type=int, default=20, show_default=True)
@click.pass_context
def jobs(ctx: click.Context, app_id: str | None, status_: str | None, limit: int) -> None:
    """List recent jobs, newest first."""
    with _client(ctx) as c:
        page = c.list(app_id=app_id, status=status_, limit=limit)
    for j in page["jobs"]:
        click.echo(f"{j['job_id']}  {j['app_id']:<16} {j['status']:<10} attempts={j['attempts']}  {j['created_at']}")
    if page["next_cursor"]:
        click.echo(f"(more: --cursor {page['next_cursor']})")


@cli.command()
@click.argument("job_id")
@click.pass_context
def cancel(ctx: click.Context, job_id: str) -> None:
    """Cancel a queued or running job."""
    with _client(ctx) as c:
        _print(c.cancel(job_id))


@cli.command()
@click.pass_context
def apps(ctx: click.Context) -> None:
    """List apps and their parameters."""
    with _client(ctx) as c:
        for a in c.apps():
            tag = " [SYNTHETIC]" if a.get("synthetic") else ""
            click.echo(f"{a['id']}{tag}: {a['name']} ({a['kind']}, model {a['deployment']}, {a['vram_gb']} GB)")
            for p in a["parameters"]:
                extra = ", ".join(f"{k}={p[k]}" for k in ("default", "minimum", "maximum", "choices") if p.get(k) is not None)
                click.echo(f"    {p['name']}: {p['type']}{' (required)' if p['required'] else ''}{'  ' + extra if extra else ''}")


@cli.command()
@click.pass_context
def workers(ctx: click.Context) -> None:
    """Model deployments: replicas, their state, queue depth."""
    import datetime as dt

    with _client(ctx) as c:
        data = c.http.get("/v1/workers").json()
    for m in data["models"]:
        tag = " [SYNTHETIC]" if m.get("synthetic") else ""
        held = f"{m['vram_held_gb']:.1f}" if m.get("vram_held_gb") is not None else "-"
        used = dt.datetime.fromtimestamp(m["last_used"]).strftime("%H:%M:%S") if m.get("last_used") else "never"
        click.echo(f"{m['deployment']}{tag}: {m['state']}  replicas {m['replica_states'] or '{}'} (target {m['target_replicas']})  "
                   f"VRAM {held}/{m['vram_declared_gb']:g} GB  queued={m['queued']} running={m['running']}  last used {used}")
        arb = m.get("arbiter") or {}
        if arb.get("last_decision"):
            click.echo(f"    last decision: {arb['last_decision']}  (loads {arb['loads']}, evictions {arb['evictions']})")
        if m.get("load_error"):
            click.echo(f"    load error: {m['load_error']}")
        for r in m["replicas"]:
            click.echo(f"    {r['replica_id']}  {r['state']:<9} load={r['load_time_s']:.2f}s  jobs={r['jobs_done']}  pid={r['pid']}"
                       if r.get("load_time_s") is not None else f"    {r['replica_id']}  {r['state']}")
    arbiter = data.get("arbiter")
    if arbiter:
        click.echo(f"arbiter: leader {arbiter['leader']}, dispatchable {arbiter['dispatchable']}, draining {arbiter['draining']}")
        credit = arbiter.get("swap_credit_s") or {}
        if credit:
            click.echo("  swap budget left: " + ", ".join(f"{g} {c:g} s" for g, c in credit.items()))
        for reason in arbiter["reasons"]:
            click.echo(f"    {reason}")
    for c in data.get("cloud") or []:
        state = "available" if c["available"] else f"UNAVAILABLE: {c['reason']}"
        click.echo(f"cloud {c['backend']}: {state}  apps {c['apps'] or '-'}  fallback for {c['fallback_for'] or '-'}")


@cli.command()
@click.option("--since", default=None, help="ISO time (default: 30 days before --until)")
@click.option("--until", default=None, help="ISO time (default: now)")
@click.option("--app", "app_id", default=None, help="only this app's jobs")
@click.option("--by", "group_by", type=click.Choice(["backend", "app", "day"]), default="backend", show_default=True)
@click.pass_context
def costs(ctx: click.Context, since: str | None, until: str | None, app_id: str | None, group_by: str) -> None:
    """What finished jobs cost: GPU-seconds and dollars, local vs cloud, and the cloud share."""
    with _client(ctx) as c:
        data = c.costs(since=since, until=until, app_id=app_id, group_by=group_by)
    click.echo(f"{data['since']} .. {data['until']}" + (f"  app {app_id}" if app_id else ""))
    click.echo(f"{group_by:<24} {'jobs':>7} {'cloud':>7} {'GPU-s':>12} {'USD':>12}")
    for g in data["groups"]:
        click.echo(f"{g['key']:<24} {g['jobs']:>7} {g['cloud_jobs']:>7} {g['gpu_seconds']:>12.1f} {g['usd']:>12.4f}")
    t = data["total"]
    click.echo(f"{'total':<24} {t['jobs']:>7} {t['cloud_jobs']:>7} {t['gpu_seconds']:>12.1f} {t['usd']:>12.4f}")
    click.echo(f"local ${t['local_usd']:.4f}, cloud ${t['cloud_usd']:.4f}; cloud share of jobs {data['cloud_share']:.1%}")
    click.echo(f"prices: {data['prices']}")


_AGE_UNITS = {"w": 7.0, "d": 1.0, "h": 1 / 24, "m": 1 / 1440}


def age_days(text: str) -> float:
    """'30d', '12h', '90m', '2w' or a bare number of days -> days (> 0)."""
    t = text.strip().lower()
    unit = _AGE_UNITS.get(t[-1:]) if t[-1:].isalpha() else 1.0
    try:
        n = float(t[:-1] if t[-1:].isalpha() else t)
    except ValueError:
        n = -1.0
    if unit is None or not n > 0 or n == float("inf"):
        raise click.BadParameter(f"{text!r} is not an age like 30d, 12h, 90m or 2w", param_hint="--older-than")
    return n * unit


@cli.command()
@click.option("--older-than", "older_than", default=None, metavar="AGE",
              help="30d, 12h, 90m, 2w (default: the stack's router.retention_days)")
@click.option("--dry-run", is_flag=True, help="count what would go, by app; delete nothing")
@click.pass_context
def prune(ctx: click.Context, older_than: str | None, dry_run: bool) -> None:
    """Delete finished jobs (succeeded, failed, cancelled) older than an age, with their artifacts and
    event streams. Queued and running jobs are never touched. The router also does this on its own."""
    days = age_days(older_than) if older_than else None
    with _client(ctx) as c:
        r = c.prune(older_than_days=days, dry_run=dry_run)
    if r["busy"]:
        click.echo("another router is pruning right now; nothing done here (try again in a moment)")
        return
    what = "would delete" if r["dry_run"] else "deleted"
    extra = "" if r["dry_run"] else f", {r['artifacts']} artifact(s), {r['event_streams']} event-stream key(s)"
    click.echo(f"{what} {r['jobs']} job(s) finished more than {r['older_than_days']:g} days ago{extra}")
    for app, n in r["by_app"].items():
        click.echo(f"  {app:<24} {n:>8}")


@cli.group()
def render() -> None:
    """Generate deployment files from serve_config.yaml."""


@render.command("rayservice")
@click.option("--config", "config_path", default="serve_config.yaml", show_default=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", default="deploy/kuberay/rayservice.yaml", show_default=True, help="'-' for stdout")
@click.option("--image", default=None, help="the stack's image (default: built from deploy/Dockerfile, this version)")
@click.option("--check", is_flag=True, help="only say whether --out is what rendering gives now (exit 1 if not)")
def render_rayservice(config_path: str, out: str, image: str | None, check: bool) -> None:
    """A KubeRay RayService whose serveConfigV2 is serve_config.yaml, with GPU worker groups and GCS
    fault tolerance; DATABASE_URL and REDIS_URL from the gpu-orchestrator Secret."""
    from . import kuberay

    text = kuberay.render_text(yaml.safe_load(Path(config_path).read_text()), **({"image": image} if image else {}))
    if check:
        if out == "-" or not Path(out).exists() or Path(out).read_text() != text:
            click.echo(f"{out} differs from what {config_path} renders: run `gpu-orch render rayservice`", err=True)
            sys.exit(1)
        click.echo(f"{out} is up to date with {config_path}")
        return
    if out == "-":
        click.echo(text, nl=False)
        return
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    click.echo(f"wrote {out} (from {config_path})")


@cli.command("import-seed")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="write the apps YAML here (default: stdout)")
def import_seed(path: str, out: str | None) -> None:
    """Convert the original system's config/apps.yaml to `apps:` entries for serve_config.yaml.

    Fields with no equivalent are listed on stderr, never silently dropped."""
    from .seed import convert

    try:
        result = convert(yaml.safe_load(Path(path).read_text()))
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    text = yaml.safe_dump({"apps": result.apps}, sort_keys=False)
    if out:
        Path(out).write_text(text)
        click.echo(f"wrote {len(result.apps)} apps to {out}", err=True)
    else:
        click.echo(text)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"{len(result.notes)} field(s) not imported (listed above); add a `models` entry for each app's deployment.", err=True)


@cli.command("new-app")
@click.argument("name")
@click.option("--task", required=True, type=click.Choice(["image", "audio", "text", "chat"]),
              help="image: text to image (PNGs); audio: speech to text (an audio file in); text: text generation; "
                   "chat: messages in, a reply out (also /v1/chat/completions)")
@click.option("--runtime-env", "runtime_env", multiple=True, metavar="PKG==VER",
              help="a pip package of the model's runtime_env (repeatable); it replaces the task's default for that package")
@click.option("--root", default=".", show_default=True, type=click.Path(file_okay=False),
              help="the project: the directory with serve_config.yaml")
@click.option("--dry-run", is_flag=True, help="show what would be written (a diff for serve_config.yaml); write nothing")
def new_app(name: str, task: str, runtime_env: tuple[str, ...], root: str, dry_run: bool) -> None:
    """Scaffold model app NAME: deployments/NAME.py (load, infer with progress and cancel, a tiny
    demo model), runtime_envs/NAME.yaml, tests/unit/test_app_NAME.py, and its model and app in
    serve_config.yaml (comments kept; checked in both profiles before anything is written)."""
    from . import scaffold

    try:
        plan = scaffold.plan(root, name, task, runtime_env)
    except scaffold.Refused as e:
        raise click.UsageError(str(e)) from None
    except scaffold.ScaffoldError as e:
        raise click.ClickException(str(e)) from None
    if dry_run:
        click.echo(plan.describe())
        return
    for path in scaffold.apply(plan):
        click.echo(f"wrote {path}")
    click.echo(f"\nNext: edit deployments/{name}.py (load: your model; infer: its call), then\n"
               f"  python -m pytest tests/unit/test_app_{name}.py\n"
               f"  gpu-orch up --demo && {plan.example}")


def _register() -> None:
    from .cli_keys import keys

    cli.add_command(keys)


_register()

if __name__ == "__main__":
    main()
