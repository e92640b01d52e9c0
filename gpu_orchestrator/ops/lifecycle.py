"""The local stack's lifecycle behind `gpu-orch up` and `down`: Postgres and Redis (embedded unless
DATABASE_URL / REDIS_URL say otherwise), the job store's migrations and bootstrap admin key, a Ray
head of our own (or RAY_ADDRESS's cluster), the runtime_envs of the demo's models, and the Serve
deploy. Progress goes to `say`; a stack that cannot start raises StackError after stopping what this
run started; the result says what is up, for the CLI to print."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

from ..settings import Settings
from . import embedded, ray_auth, stack
from .admin_key import bootstrap_admin
from .ingress import INGRESS_CHOICES, ingress_env
from .config_edit import APP_NAME
Say = Callable[[str], None]

# An idle stack's CPU (bench/idle.py): every Serve replica exports its metrics each 100 ms by default
# and the controller loops each 100 ms; Prometheus scrapes every 15 s or so, and a scaling decision
# taking 0.4 s more is nothing beside a model's load. Ray's log monitor looks for new log files twice
# a second (for drivers that stream worker logs; ours do not).
IDLE_FRIENDLY = {"RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000", "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
                 "LOG_NAME_UPDATE_INTERVAL_S": "5"}

# What each service adds to state.json: dropped again when a failed `up` stops that service.
_STATE_KEYS = {"ray": ("ray_head_pid", "ray_address", "ray_session_dir", "ray_dashboard_port", "url", "serve_apps"),
               "redis": ("embedded_redis", "redis_url"), "postgres": ("embedded_postgres", "database_url")}


class StackError(RuntimeError):
    """Why the stack cannot start, in words for its operator."""


@dataclasses.dataclass
class UpResult:
    base: str  # the API's URL
    host: str  # where the API listens
    auth_on: bool
    admin_token: str | None  # made by this run (shown once), else None
    home: Path
    own_head: bool
    address: str  # the Ray head's or cluster's address
    dashboard_port: int
    ui_paths: list[str]  # the UI pages under base
    demo: bool
    config_path: str


def ray_cli() -> str:
    exe = Path(sys.executable).parent / "ray"
    return str(exe) if exe.exists() else (shutil.which("ray") or "ray")


def ray_env(home: Path, *, own_head: bool, ingress: str = "serve") -> dict[str, str]:
    """Environment of the local Ray head and of our driver."""
    extra = ray_auth.stack_env(home) if own_head else {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
    if own_head:
        extra.update(ingress_env(ingress))
    # Faster autoscaling metric pushes: scale-from-zero without waiting out a 10 s interval.
    extra["RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S"] = os.environ.get(
        "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "0.5")
    if own_head:  # a single-node head has no other node to drain to: stop at once on SIGTERM
        extra["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
        for var, value in IDLE_FRIENDLY.items():
            extra[var] = os.environ.get(var, value)
        # The models' pip packages in thin overlays of this install (under home/envs), not a 2 GB
        # copy each.
        from gpu_orchestrator.serve.overlay_env import register

        extra = register({**extra, "GPU_ORCH_HOME": str(home)})
    return extra


def up(config_path: str, *, num_cpus: int | None = None, demo: bool = False, host: str | None = None,
       say: Say = print, warn: Say = print) -> UpResult:
    """Start everything; if a step fails, stop what this run started again (saying so on `warn`)
    and raise (StackError for what the operator can fix, KeyboardInterrupt as it came)."""
    s = Settings()
    home = s.home
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o755)  # the embedded Postgres runs as its own system user when we are root; secrets inside are 600
    state = stack.load_state(home)
    started: list[str] = []  # services this run started, in order: the ones a failure stops again
    try:
        return _up(s, state, started, config_path, num_cpus, demo, host, say)
    except BaseException:
        try:
            roll_back(home, state, started, warn)
        except Exception as rb:  # say so, but the error that made `up` fail is the one to show
            warn(f"could not stop everything ({rb}): run `gpu-orch down`")
        raise


def _up(s: Settings, state: dict[str, Any], started: list[str], config_path: str, num_cpus: int | None, demo: bool,
        listen: str | None, say: Say) -> UpResult:
    home = s.home
    address = os.environ.get("RAY_ADDRESS")
    own_head = not address
    # Checks first, so that a stack that cannot start starts nothing.
    if address and os.environ.get("RAY_AUTH_MODE", "").lower() != "disabled" and ray_auth.external_token_source() is None:
        raise StackError(ray_auth.missing_token_message(address))
    if own_head and s.ingress not in INGRESS_CHOICES:
        raise StackError(f"GPU_ORCH_INGRESS is {s.ingress!r}: it must be one of {', '.join(INGRESS_CHOICES)}")
    head = stack.ray_head(home) if own_head else None  # (pid, port) of the head an earlier `up` started
    if own_head and head is None:
        for port, var, what in ((s.ray_port, "GPU_ORCH_RAY_PORT", "Ray's port"),
                                (s.ray_dashboard_port, "GPU_ORCH_RAY_DASHBOARD_PORT", "the Ray dashboard's port")):
            if stack.port_in_use(port):
                raise StackError(
                    f"{what} {port} is in use (another Ray head, or another program). Stop it, set {var} to a "
                    "free port, or set RAY_ADDRESS to deploy to a running Ray cluster.")

    def record(**fields: Any) -> None:
        state.update(fields)
        stack.save_state(home, state)

    db = s.database_url or _embedded_postgres(home, started, record, say)
    redis_url = s.redis_url or _embedded_redis(home, s.redis_maxmemory, started, record, say)
    say("migrating the job store ...")
    from gpu_orchestrator.store.postgres import PostgresJobStore

    PostgresJobStore.connect(db).close()
    admin_token = bootstrap_admin(db, home)  # the first up of this home: shown once

    env = ray_env(home, own_head=own_head, ingress=s.ingress)
    dashboard_port = s.ray_dashboard_port
    if own_head:
        ray_auth.ensure_token(home)
        if head is not None:
            head_pid, port = head
            dashboard_port = state.get("ray_dashboard_port") or dashboard_port
            address = f"127.0.0.1:{port}"
            say(f"Ray head already running at {address}")
        else:
            address = f"127.0.0.1:{s.ray_port}"
            cpus = num_cpus or max(8, os.cpu_count() or 1)
            say(f"starting Ray (head at {address}, {cpus} logical CPUs) ...")
            started.append("ray")
            cmd = [ray_cli(), "start", "--head", "--block", f"--port={s.ray_port}", f"--num-cpus={cpus}",
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
        raise StackError(
            f"could not connect to Ray at {address}: {type(e).__name__}: {e}"
            + ("" if own_head else "\n(RAY_ADDRESS is set: is the cluster up, and is its auth token the one in "
               "RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH / ~/.ray/auth_token?)")) from None
    if own_head:
        record(ray_session_dir=str(ray_session_dir() or ""))

    cfg = with_env(load_config(config_path), {"DATABASE_URL": db, "REDIS_URL": redis_url, "GPU_ORCH_HOME": str(home)},
                   APP_NAME)
    router_app = next(a for a in cfg["applications"] if a["name"] == APP_NAME)
    if demo:
        router_app.setdefault("args", {})["profile"] = "demo"
    if listen:
        cfg.setdefault("http_options", {})["host"] = listen
    http = cfg.get("http_options", {})
    host = http.get("host", "127.0.0.1")
    from gpu_orchestrator.core.keys import auth_required

    router_args = router_app.get("args") or {}  # the UIs' env vars below leave them as they are
    auth_on = auth_required((router_args.get("router") or {}).get("auth", "auto"), host)
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{http.get('port', 8000)}"
    # The UIs talk to the router through the Serve proxy on their own node (every node runs one).
    uis = [a for a in cfg["applications"] if a["name"] != APP_NAME]
    for app in uis:
        cfg = with_env(cfg, {"GPU_ORCH_URL": base}, app["name"])
    from gpu_orchestrator.serve.warm import model_envs, warm
    from gradio_uis.serve import page_paths

    arbiter_on, envs = model_envs(router_args, Path(config_path).resolve().parent)
    # The demo's models start at zero (its arbiter): their environments now, on this one machine, not
    # on their first jobs. (A real profile's GPU replicas may run on other nodes: nothing to warm here.)
    warmed = demo and arbiter_on
    if warmed:
        warm(envs, say=lambda line: say(f"  {line}"))
    say(f"deploying {config_path}{' (demo profile: tiny untrained models)' if demo else ''} ... "
        + ("" if warmed else "(the first deploy builds each model's runtime_env: a few minutes)"))
    record(serve_apps=[a["name"] for a in cfg["applications"]])
    deploy(cfg, on_change=lambda line: say(f"  {line}"))
    record(url=base)
    return UpResult(base=base, host=host, auth_on=auth_on, admin_token=admin_token, home=home, own_head=own_head,
                    address=address, dashboard_port=dashboard_port, demo=demo, config_path=config_path,
                    ui_paths=[path for a in uis if a.get("route_prefix") for path in page_paths(a)])


def _embedded_postgres(home: Path, started: list[str], record: Callable[..., None], say: Say) -> str:
    pg_dir = home / "postgres"
    if embedded.postgres_pid(pg_dir) is None:
        say(f"starting embedded Postgres (data: {pg_dir}) ...")
        started.append("postgres")
    else:
        say(f"embedded Postgres already running (data: {pg_dir})")
    record(embedded_postgres=str(pg_dir))  # before it starts: a crash mid-start still leaves it findable
    db = embedded.start_postgres(pg_dir)
    record(database_url=db)
    return db


def _embedded_redis(home: Path, maxmemory: str, started: list[str], record: Callable[..., None], say: Say) -> str:
    redis_dir = home / "redis"
    if embedded.redis_pid(redis_dir) is None:
        say(f"starting embedded Redis (data: {redis_dir}, maxmemory {maxmemory}) ...")
        started.append("redis")
    else:
        say(f"embedded Redis already running (data: {redis_dir}, maxmemory now {maxmemory})")
    record(embedded_redis=str(redis_dir))
    redis_url = embedded.start_redis(redis_dir, maxmemory=maxmemory)
    record(redis_url=redis_url)
    return redis_url


def roll_back(home: Path, state: dict[str, Any], started: list[str], warn: Say) -> None:
    """After a failed `up`: stop what this run started (not what an earlier `up` left running)."""
    if not started:
        return
    warn(f"up failed: stopping what it started ({', '.join(started)}) ...")
    if "ray" in sys.modules:
        from gpu_orchestrator.serve.deploy import disconnect

        disconnect()
    stack.stop(home, started, state, say=warn)
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


def down(say: Say = print, warn: Say = print) -> bool:
    """Stop what `up` started (the app, a local Ray head, embedded Postgres/Redis), found from
    GPU_ORCH_HOME's state.json and, without it, from their pidfiles there. Data is kept. Whether
    anything was running."""
    home = Settings().home
    state = stack.load_state(home)
    found = stack.running(home, state)
    if state.get("ray_started") and not state.get("ray_head_pid") and "ray" not in found:
        warn("this stack's Ray head was started by an older gpu-orch: stop it with `ray stop` "
             "(which stops every Ray instance on this machine)")
    deleted_app = False
    if state.get("ray_address") and ("ray" in found or not state.get("ray_head_pid")):
        try:  # remove the app first, so its replicas shut down gracefully
            ray_auth.apply(ray_auth.state_env(home, state))
            from gpu_orchestrator.serve.deploy import delete_app

            delete_app(state["ray_address"], *(state.get("serve_apps") or [APP_NAME]))
            deleted_app = True
        except Exception as e:
            warn(f"could not delete the Serve app: {e}")
    stopped = stack.stop(home, state=state, say=say)
    if "ray" in stopped:
        from gpu_orchestrator.serve.deploy import drop_runtime_envs

        drop_runtime_envs(state.get("ray_session_dir"))  # Ray's own pip copies (GBs) where overlays are off
    stack.state_path(home).unlink(missing_ok=True)
    return bool(stopped or deleted_app)
