"""One Ray instance and the deployed applications (the orchestrator on the demo profile, the arbiter
and outage apps, the UIs) for the whole test session: tests/serve and tests/browser share them.
Each application is deployed when a test first asks for it (Stack)."""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Callable

import httpx
import pytest
import yaml

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
APP_NAME = "orchestrator"
# Tiny models are built once and cached here across sessions (the builders skip a finished build).
TINY_DIR = os.environ.get("GPU_ORCH_TEST_TINY_DIR", "/tmp/gpu-orch-test-tiny")


# Under pytest-xdist (`make test` runs two workers), the tests that share the session's Ray instance
# run on one worker, in order, and the e2e tests (each starts a Ray head of its own) on one worker;
# the unit and integration tests (and tests marked own_ray) spread over both meanwhile.
XDIST_GROUPS = {"serve": "ray-session", "browser": "ray-session", "e2e": "e2e"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the group markers
def pytest_collection_modifyitems(config, items):
    """An application's deploy (the demo's: every model's runtime_env cloned from the base
    virtualenv, minutes on 2 cores) runs in the setup of whichever test needs it first: the per-test
    timeout covers that test's own body only (wait_running bounds the deploy)."""
    for item in items:
        parts = Path(str(item.path)).relative_to(ROOT).parts
        if len(parts) > 1 and parts[0] == "tests" and parts[1] in XDIST_GROUPS and not item.get_closest_marker("own_ray"):
            item.add_marker(pytest.mark.xdist_group(XDIST_GROUPS[parts[1]]))
        if "stack" not in getattr(item, "fixturenames", ()):
            continue
        own = item.get_closest_marker("timeout")
        timeout = (own.kwargs.get("timeout") or (own.args[0] if own.args else None)) if own else None
        item.add_marker(pytest.mark.timeout(timeout or config.getini("timeout"), func_only=True), append=False)


ECHO_CLOUD = {"backend": "replicate", "model": "test/echo", "poll_interval_s": 0.1, "call_timeout_s": 5}


def cloud_args(replicate: dict | None) -> dict:
    """The `cloud:` block pointing Replicate at the session's loopback fake (its token in a file)."""
    if replicate is None:
        return {}
    return {"cloud": {"replicate": {"base_url": replicate["base_url"], "token_file": replicate["token_file"]}}}


def test_args(database_url: str, redis_url: str, replicate: dict | None = None) -> dict:
    """serve_config.yaml's args in the demo profile (tiny untrained sdxl, zimage, whisper, llm in their
    own runtime_envs), tuned for tests: two router replicas, short leases, extra apps."""
    cfg = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    args = copy.deepcopy(next(a for a in cfg["applications"] if a["name"] == APP_NAME)["args"])
    args["database_url"], args["redis_url"] = database_url, redis_url
    args["profile"] = "demo"
    args["artifacts_url"] = TINY_DIR + "/artifacts"
    args["router"].update(num_replicas=2, lease_s=3, poll_interval_s=0.2, retry_backoff_s=0.2)
    args["models"]["echo"]["num_replicas"] = 2
    for name, model in args["models"].items():
        if model.get("demo"):  # cache the tiny builds across test sessions
            model["demo"]["init"]["tiny_path"] = f"{TINY_DIR}/{name}"
    echo = next(a for a in args["apps"] if a["id"] == "echo")
    # Isolation: two models pinning conflicting versions of one small package, each in its own
    # runtime_env (a pip virtualenv on top of the base install).
    for name in ("tabulate-old", "tabulate-new"):
        args["models"][name] = {"impl": "deployments.echo:Echo", "runtime_env": f"tests/serve/runtime_envs/{name}.yaml",
                                "num_cpus": 0.1, "init": {"report_packages": ["tabulate"]}}
        args["apps"].append(dict(copy.deepcopy(echo), id=name, deployment=name))
    # A real model whose load fails (a checkpoint that does not exist): its jobs must fail with the
    # load error, not wait for a replica that never comes.
    args["models"]["whisper-broken"] = {"impl": "deployments.whisper_model:Whisper", "runtime_env": "runtime_envs/whisper.yaml",
                                        "num_cpus": 0.1, "init": {"model": "/nonexistent/whisper-large.pt"}}
    transcribe = next(a for a in args["apps"] if a["id"] == "transcribe")
    args["apps"].append(dict(copy.deepcopy(transcribe), id="transcribe-broken", deployment="whisper-broken", max_attempts=3,
                             aliases=[]))
    # The same broken model with a fallback: once its replica reports the load error, jobs go to the cloud.
    args["apps"].append(dict(copy.deepcopy(transcribe), id="transcribe-broken-fb", deployment="whisper-broken", aliases=[],
                             fallback={**ECHO_CLOUD, "output": "native"}))
    # One echo replica no other test sends work to: a test that waits for it to say it has nothing
    # in flight (its heartbeat) waits for its own job's work to stop, not for other tests' jobs.
    args["models"]["echo-solo"] = dict(copy.deepcopy(args["models"]["echo"]), num_replicas=1)
    args["apps"] += [
        dict(copy.deepcopy(echo), id="echo-once", max_attempts=1),
        dict(copy.deepcopy(echo), id="echo-tiny", max_queued=2, max_in_flight=1),
        dict(copy.deepcopy(echo), id="echo-solo", deployment="echo-solo"),
        dict(copy.deepcopy(echo), id="echo-timeout", deployment="echo-solo", timeout_s=1, max_attempts=1),
        # Cloud routing: busy -> the fallback (Replicate's fake) for new jobs (4 s a job until one
        # succeeds here: one job ahead stays local, two go to the cloud); a cloud-only app.
        dict(copy.deepcopy(echo), id="echo-busy", max_in_flight=1, fallback={
            **ECHO_CLOUD, "when": "busy", "max_local_wait_s": 6, "service_s": 4}),
        dict(copy.deepcopy(echo), id="echo-cloud", kind="replicate", deployment="", cloud=ECHO_CLOUD),
    ]
    # Apps as `gpu-orch new-app NAME --task image|audio|chat` writes them (ui_pic, ui_hear, ui_talk):
    # the UIs list them with no UI change (tests/browser/test_ui_generated.py).
    from tests.browser.generated_apps import generated

    models, apps = generated()
    args["models"].update(models)
    args["apps"] += apps
    args.update(cloud_args(replicate))
    return args


def arbiter_args(database_url: str, redis_url: str, replicate: dict | None = None) -> dict:
    """Three synthetic models on one fake GPU whose shares (0.6) and VRAM (16/14/12 of 24 GB)
    cannot co-reside, under the arbiter with short timers."""
    def model(vram, load):
        return {"impl": "deployments.echo:Echo", "runtime_env": "runtime_envs/echo.yaml", "num_cpus": 0.1,
                "num_gpus": 0.6, "vram_gb": vram, "load_s": load, "init": {"load_time_s": load}}

    def app(i, dep):
        return {"id": i, "deployment": dep, "synthetic": True, "max_in_flight": 4, "timeout_s": 120,
                "parameters": [{"name": "delay_s", "type": "number", "default": 0},
                               {"name": "steps", "type": "integer", "default": 1, "minimum": 1}]}

    return {
        "database_url": database_url, "redis_url": redis_url,
        "router": {"num_replicas": 1, "lease_s": 5, "poll_interval_s": 0.2},
        # The swap budget's allowance (12 s) refills in a minute rather than 150 s, like the other timers.
        "arbiter": {"enabled": True, "idle_ttl_s": 6, "max_wait_s": 30, "min_resident_s": 2, "tick_s": 0.25,
                    "swap_budget": 0.2, "swap_window_s": 60, "gpus": [{"id": "gpu0", "vram_gb": 24}]},
        # echo-huge needs more than the GPU has: its jobs must fail with the reason, not wait forever.
        "models": {"echo-a": model(16, 1.0), "echo-b": model(14, 1.0), "echo-c": model(12, 1.0), "echo-huge": model(30, 0.1)},
        # huge-fb: the same unplaceable model with a fallback: its jobs run in the cloud instead.
        "apps": [app("a", "echo-a"), app("b", "echo-b"), app("c", "echo-c"), app("huge", "echo-huge"),
                 {**app("huge-fb", "echo-huge"), "fallback": ECHO_CLOUD}],
        **cloud_args(replicate),
    }


def warm_args(database_url: str, redis_url: str) -> dict:
    """Two synthetic models that cannot share the fake GPU's 4 GB (2.6 and 2.4), under the arbiter
    with the warm tier on: each takes a placement share (0.2: beside the arbiter app's 0.6), so a
    parked replica never stops Serve from starting the other. Small, because a park also needs
    the node's free RAM (min_free_gb on top of the copy), and a CI box has less free than 16 GB."""
    def model(vram):
        return {"impl": "deployments.echo:Echo", "runtime_env": "runtime_envs/echo.yaml", "num_cpus": 0.1,
                "num_gpus": 0.2, "vram_gb": vram, "load_s": 1.0, "init": {"load_time_s": 0.5, "warm_load_time_s": 0.1}}

    return {
        "database_url": database_url, "redis_url": redis_url,
        "router": {"num_replicas": 1, "lease_s": 5, "poll_interval_s": 0.2},
        "arbiter": {"enabled": True, "idle_ttl_s": 600, "max_wait_s": 30, "min_resident_s": 0, "tick_s": 0.25,
                    "swap_budget": None, "gpus": [{"id": "gpu0", "vram_gb": 4}],
                    "warm": {"enabled": True, "host_budget_gb": 40}},
        "models": {"warm-a": model(2.6), "warm-b": model(2.4)},
        "apps": [{"id": i, "deployment": f"warm-{i}", "synthetic": True, "timeout_s": 60,
                  "parameters": [{"name": "message", "type": "string", "default": ""}]} for i in ("a", "b")],
    }


def ui_apps(api_url: str) -> list[dict]:
    """The UI applications exactly as serve_config.yaml ships them, pointed at the test orchestrator."""
    cfg = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    apps = [a for a in cfg["applications"] if a["import_path"].startswith("gradio_uis.")]
    assert [(a["route_prefix"], a["args"]["uis"]) for a in apps] == [("/ui", ["images", "speech", "chat", "admin"])]
    return [{**a, "args": {**a["args"], "api_url": api_url}} for a in apps]


def outage_args(database_url: str, redis_url: str, run_log: str) -> dict:
    """The echo model alone on its own embedded Postgres and Redis (what `gpu-orch up` starts when
    DATABASE_URL/REDIS_URL are unset), so the fault tests can kill those without touching the rest."""
    cfg = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    args = copy.deepcopy(next(a for a in cfg["applications"] if a["name"] == APP_NAME)["args"])
    args.update(database_url=database_url, redis_url=redis_url, artifacts_url=TINY_DIR + "/artifacts")
    args["router"].update(num_replicas=1, lease_s=3, poll_interval_s=0.2, retry_backoff_s=0.2)
    args["arbiter"]["enabled"] = False
    args["models"] = {"echo": args["models"]["echo"]}
    args["models"]["echo"]["init"]["run_log"] = run_log
    args["apps"] = [a for a in args["apps"] if a["id"] == "echo"]
    return args


@pytest.fixture(scope="session")
def outage_services():
    """Embedded Postgres and Redis (gpu_orchestrator.ops.embedded, the default a fresh machine gets)."""
    import shutil
    import tempfile

    from gpu_orchestrator.ops import embedded

    root = Path(tempfile.mkdtemp(prefix="gpu-orch-outage-"))
    os.chmod(root, 0o755)  # the embedded Postgres runs as its own system user when we are root
    dirs = {"pg": root / "pg", "redis": root / "redis", "run_log": root / "runs.log"}
    urls = {"pg": embedded.start_postgres(dirs["pg"]), "redis": embedded.start_redis(dirs["redis"])}
    dirs["run_log"].write_text("")
    os.chmod(dirs["run_log"], 0o666)
    yield {"dirs": dirs, "urls": urls}
    embedded.stop_redis(dirs["redis"])
    embedded.stop_postgres(dirs["pg"])
    shutil.rmtree(root, ignore_errors=True)


def one_ray_session_per_run() -> Path | None:
    """Under pytest-xdist, the Ray-session tests must all run on one worker (their xdist group): a
    second worker starting its own Ray instance would share the machine's Redis with the first
    (heartbeat keys per deployment) and deploy everything twice. Fails loudly if grouping broke."""
    import tempfile

    uid = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not uid:
        return None
    mark = Path(tempfile.gettempdir()) / f"gpu-orch-ray-session-{uid}"
    try:
        os.close(os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        pytest.fail(f"a second xdist worker ({os.environ.get('PYTEST_XDIST_WORKER')}) wants the session's Ray "
                    "instance: the xdist_group of tests/serve and tests/browser is not in effect (pytest-xdist "
                    "and pytest versions?)", pytrace=False)
    return mark


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    mark = one_ray_session_per_run()

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Scale-from-zero must not wait out the default 10 s metrics push (read when Ray starts).
    os.environ["RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S"] = "0.5"
    metrics_port = free_port()
    from gpu_orchestrator.serve import overlay_env

    # As `gpu-orch up` starts its head; the overlays go to $GPU_ORCH_HOME/envs (CI: its empty HOME;
    # a developer's later test sessions reuse them).
    os.environ.update(overlay_env.register(dict(os.environ)))
    # The ingress `gpu-orch up` starts (Serve's proxy; GPU_ORCH_INGRESS=haproxy runs the session on
    # Serve's HAProxy ingress, with ports of its own beside the e2e tests' Ray heads).
    from gpu_orchestrator.ops.ingress import ingress_env
    from gpu_orchestrator.settings import Settings

    os.environ.update(ingress_env(Settings().ingress))
    ray.init(address="local", num_cpus=16, num_gpus=1, include_dashboard=False, configure_logging=False, log_to_driver=False,
             _metrics_export_port=metrics_port)
    from gpu_orchestrator.serve.deploy import drop_runtime_envs, ray_session_dir

    session = ray_session_dir()
    yield {"metrics_port": metrics_port}
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    drop_runtime_envs(session, wait=False)  # the suite need not wait for 8 GB to be deleted
    if mark is not None:
        mark.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def fake_replicate(tmp_path_factory):
    """One loopback Replicate for the session (tests/fakes/cloud.py); model test/echo answers
    {"echo": its input}."""
    from tests.fakes.cloud import Behaviour, FakeReplicate

    with FakeReplicate() as fake:
        token = tmp_path_factory.mktemp("replicate") / "token"
        token.write_text(fake.token)
        os.chmod(token.parent, 0o755)
        os.chmod(token, 0o644)
        fake.behaviours["test/echo"] = Behaviour(polls=1, output=lambda inp, _: {"echo": inp}, predict_time=0.5)
        yield {"fake": fake, "base_url": fake.base_url, "token_file": str(token)}


class Stack:
    """The session's Serve applications, each deployed when a test first needs it: a test of the
    arbiter does not wait for the demo models' runtime_envs, and applications no test has asked
    for yet cost no CPU meanwhile. Each addition applies the whole config again, through the same
    path as `serve deploy` (the arbiter's application-level autoscaling policy is only settable
    that way); Serve leaves the applications whose config did not change as they are."""

    def __init__(self, base: str, http_options: dict):
        self.base = base
        self.http_options = http_options
        self.specs: dict[str, Callable[[], dict]] = {}  # app name -> its config, built when needed
        self.up: dict[str, dict] = {}

    def need(self, *names: str) -> str:
        from gpu_orchestrator.serve.deploy import deploy

        missing = [n for n in names if n not in self.up]
        if missing:
            self.up.update({n: self.specs[n]() for n in missing})
            deploy({"http_options": self.http_options, "applications": list(self.up.values())})
            for n in missing:
                if self.up[n]["import_path"] == "serve_apps.orchestrator:build_app":
                    wait_healthy(self.base + self.up[n]["route_prefix"].rstrip("/"))
        return self.base


def router_app(name: str, prefix: str, args: dict, **extra) -> dict:
    return {"name": name, "route_prefix": prefix, "import_path": "serve_apps.orchestrator:build_app", "args": args, **extra}


@pytest.fixture(scope="session")
def stack(ray_cluster, serve_backend, fake_replicate):
    dbs = [serve_backend.fresh_database() for _ in range(2)]
    urls = [serve_backend.url_for(d) for d in dbs]
    port = free_port()
    st = Stack(f"http://127.0.0.1:{port}", {"host": "127.0.0.1", "port": port})

    # The demo profile's models, with the arbiter off (no virtual GPU): the tests assert against
    # models that stay loaded; the arbiter app below, and the demo's own e2e test, show it working.
    st.specs[APP_NAME] = lambda: router_app(APP_NAME, "/", {**test_args(urls[0], serve_backend.redis_url, fake_replicate),
                                                            "demo": {}})
    st.specs["arbiter"] = lambda: router_app(
        "arbiter", "/arb", arbiter_args(urls[1], serve_backend.redis_url, fake_replicate),
        autoscaling_policy={"policy_function": "serve_apps.autoscaling:arbiter_policy"})
    def warm_db() -> str:  # made when a test first needs the app
        dbs.append(serve_backend.fresh_database())
        return serve_backend.url_for(dbs[-1])

    st.specs["warm"] = lambda: router_app(
        "warm", "/warm", warm_args(warm_db(), serve_backend.redis_url),
        autoscaling_policy={"policy_function": "serve_apps.autoscaling:arbiter_policy"})
    # The UIs as shipped, and the admin page also over the arbiter app (fake GPU, short timers),
    # where models change state.
    for ui in ui_apps(st.base) + [{"name": "ui-admin-arb", "route_prefix": "/ui/admin-arb",
                                   "import_path": "gradio_uis.serve:build_app",
                                   "args": {"ui": "admin", "api_url": st.base + "/arb"}}]:
        st.specs[ui["name"]] = lambda ui=ui: ui
    yield st
    from ray import serve

    serve.shutdown()  # every application at once (deleting them one by one took 3 s each)
    for d in dbs:
        serve_backend.drop(d)


@pytest.fixture(scope="session")
def deployed(stack):
    """The demo orchestrator (tiny untrained models in their own runtime_envs, test apps)."""
    return stack.need(APP_NAME)


@pytest.fixture(scope="session")
def orchestrator(deployed):
    return deployed


@pytest.fixture(scope="session")
def arbiter_url(stack):
    return stack.need("arbiter") + "/arb"


@pytest.fixture(scope="module")
def warm_url(stack):
    """The warm tier's app, deleted afterwards: its parked replicas keep their GPU shares."""
    from ray import serve

    yield stack.need("warm") + "/warm"
    serve.delete("warm", _blocking=False)
    stack.up.pop("warm", None)


@pytest.fixture(scope="session")
def outage_url(stack, outage_services):
    """The echo model on its own embedded Postgres and Redis, which the outage tests kill."""
    urls, dirs = outage_services["urls"], outage_services["dirs"]
    stack.specs["outage"] = lambda: router_app("outage", "/outage", outage_args(urls["pg"], urls["redis"], str(dirs["run_log"])))
    return stack.need("outage") + "/outage"


@pytest.fixture(scope="session")
def ui_apps_deployed(stack):
    """The UIs (and the apps they talk to)."""
    return stack.need(APP_NAME, "arbiter", *(n for n in stack.specs if n == "ui" or n.startswith("ui-")))


def wait_healthy(base: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{base}/healthz not healthy after {timeout_s}s")


@pytest.fixture
def http(orchestrator):
    with httpx.Client(base_url=orchestrator, timeout=30) as c:
        yield c
