"""`gpu-orch`: start/stop the stack and talk to the router.

    gpu-orch up                         # Ray + embedded Postgres/Redis (if URLs unset) + deploy
    gpu-orch submit echo -p message=hi --wait
    gpu-orch status JOB_ID | jobs | cancel JOB_ID | apps | workers
    gpu-orch import-seed config/apps.yaml
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
import yaml

from .client import DEFAULT_URL, ApiError, Client
from .settings import Settings

RAY_PORT = 6380  # not 6379: that is Redis's port, and Ray's GCS defaults to it
APP_NAME = "orchestrator"


def _client(ctx: click.Context) -> Client:
    return Client(ctx.obj["url"])


def _print(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def _state_path(home: Path) -> Path:
    return home / "state.json"


def _load_state(home: Path) -> dict[str, Any]:
    p = _state_path(home)
    return json.loads(p.read_text()) if p.exists() else {}


def _save_state(home: Path, state: dict[str, Any]) -> None:
    home.mkdir(parents=True, exist_ok=True)
    _state_path(home).write_text(json.dumps(state, indent=2))


@click.group()
@click.option("--url", envvar="GPU_ORCH_URL", default=DEFAULT_URL, show_default=True, help="router base URL")
@click.pass_context
def cli(ctx: click.Context, url: str) -> None:
    """GPU Orchestrator: many AI models on shared GPUs."""
    ctx.ensure_object(dict)
    ctx.obj["url"] = url


def main() -> None:
    try:
        cli(obj={})
    except ApiError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)


# -- stack lifecycle --------------------------------------------------------------------------------


def _ray_env() -> dict[str, str]:
    env = dict(os.environ)
    # Ray 2.60's `ray start` turns token auth on; drivers then need token mode to connect.
    env.setdefault("RAY_AUTH_MODE", "token")
    # Faster autoscaling metric pushes: scale-from-zero without waiting out a 10 s interval.
    env.setdefault("RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "0.5")
    return env


def _ray_cli() -> str:
    exe = Path(sys.executable).parent / "ray"
    return str(exe) if exe.exists() else (shutil.which("ray") or "ray")


@cli.command()
@click.option("--config", "config_path", default="serve_config.yaml", show_default=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--num-cpus", type=int, default=None, help="logical CPUs for a local Ray head (default: max(8, cores))")
@click.option("--demo", is_flag=True, help="demo profile: tiny untrained versions of every model, built locally "
              "(CPU is enough, nothing is downloaded; outputs are noise and labelled so)")
def up(config_path: str, num_cpus: int | None, demo: bool) -> None:
    """Start everything: Postgres/Redis (embedded when DATABASE_URL/REDIS_URL are unset), Ray, the app."""
    from . import embedded

    s = Settings()
    home = s.home
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o755)  # the embedded Postgres runs as its own system user when we are root
    state = _load_state(home)

    if s.database_url:
        db = s.database_url
    else:
        click.echo(f"starting embedded Postgres (data: {home / 'postgres'}) ...")
        db = embedded.start_postgres(home / "postgres")
        state["embedded_postgres"] = str(home / "postgres")
    if s.redis_url:
        redis_url = s.redis_url
    else:
        click.echo(f"starting embedded Redis (data: {home / 'redis'}) ...")
        redis_url = embedded.start_redis(home / "redis")
        state["embedded_redis"] = str(home / "redis")
    click.echo("migrating the job store ...")
    from .store import JobStore

    JobStore.connect(db).close()

    env = _ray_env()
    os.environ.update({k: env[k] for k in ("RAY_AUTH_MODE", "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S")})
    address = os.environ.get("RAY_ADDRESS")
    if not address:
        address = f"127.0.0.1:{RAY_PORT}"
        if not state.get("ray_started"):
            cpus = num_cpus or max(8, os.cpu_count() or 1)
            click.echo(f"starting Ray (head at {address}, {cpus} logical CPUs) ...")
            cmd = [_ray_cli(), "start", "--head", f"--port={RAY_PORT}", f"--num-cpus={cpus}",
                   "--dashboard-host=127.0.0.1", "--disable-usage-stats"]
            r = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if r.returncode != 0 and "already" not in (r.stdout + r.stderr).lower():
                raise click.ClickException(f"ray start failed:\n{r.stdout}\n{r.stderr}")
            state["ray_started"] = True
    state.update(ray_address=address, database_url=db, redis_url=redis_url)
    _save_state(home, state)

    import ray

    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    from serve_apps.deploy import deploy, load_config, ray_session_dir, with_env

    if state.get("ray_started"):
        state["ray_session_dir"] = str(ray_session_dir() or "")
        _save_state(home, state)

    cfg = with_env(load_config(config_path), {"DATABASE_URL": db, "REDIS_URL": redis_url, "GPU_ORCH_HOME": str(home)},
                   APP_NAME)
    if demo:
        app = next(a for a in cfg["applications"] if a["name"] == APP_NAME)
        app.setdefault("args", {})["profile"] = "demo"
    click.echo(f"deploying {config_path}{' (demo profile: tiny untrained models)' if demo else ''} ... "
               "(the first deploy builds each model's runtime_env: a few minutes)")
    deploy(cfg, on_change=lambda line: click.echo(f"  {line}"))
    http = cfg.get("http_options", {})
    host = http.get("host", "127.0.0.1")
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{http.get('port', 8000)}"
    state["url"] = base
    _save_state(home, state)
    click.echo(
        f"\nGPU Orchestrator is up.\n"
        f"  API:            {base}/v1/jobs   (docs: {base}/docs)\n"
        f"  Ray dashboard:  http://127.0.0.1:8265\n"
        f"  Metrics:        Ray's Prometheus endpoint (gpu_orch_* series)\n"
        f"  Data:           {home}\n"
        f"  Profile:        {'demo (tiny UNTRAINED models: outputs are noise)' if demo else config_path}\n"
        + ("Try: gpu-orch submit sdxl -p prompt='a red fox' -p width=256 -p height=256 --wait\n"
           "     gpu-orch submit chat -p messages='[{\"role\":\"user\",\"content\":\"hi\"}]' --wait"
           if demo else "Try: gpu-orch submit echo -p message=hello --wait")
    )


@cli.command()
def down() -> None:
    """Stop what `up` started (the app, a local Ray head, embedded Postgres/Redis). Data is kept."""
    from . import embedded

    s = Settings()
    state = _load_state(s.home)
    if not state:
        click.echo("nothing to stop (no state file)")
        return
    os.environ.update(_ray_env())
    if state.get("ray_address"):
        try:
            import ray
            from ray import serve

            ray.init(address=state["ray_address"], log_to_driver=False, logging_level="ERROR")
            serve.delete(APP_NAME)
            ray.shutdown()
        except Exception as e:
            click.echo(f"could not delete the Serve app: {e}", err=True)
    if state.get("ray_started"):
        click.echo("stopping Ray ...")
        subprocess.run([_ray_cli(), "stop"], env=_ray_env(), capture_output=True)
        from serve_apps.deploy import drop_runtime_envs

        drop_runtime_envs(state.get("ray_session_dir"))  # GBs of per-model virtualenvs, rebuilt on the next up
    if state.get("embedded_redis"):
        click.echo("stopping embedded Redis ...")
        embedded.stop_redis(Path(state["embedded_redis"]))
    if state.get("embedded_postgres"):
        click.echo("stopping embedded Postgres ...")
        embedded.stop_postgres(Path(state["embedded_postgres"]))
    _state_path(s.home).unlink(missing_ok=True)
    click.echo(f"stopped; data kept in {s.home}")


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
            elif ev.get("event") == "status":
                say(f"status: {data['status']}" + (f" (attempt {data['attempt']})" if data.get("attempt") else ""))
                if data["status"] in ("succeeded", "failed", "cancelled"):
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
        for reason in arbiter["reasons"]:
            click.echo(f"    {reason}")


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


if __name__ == "__main__":
    main()
