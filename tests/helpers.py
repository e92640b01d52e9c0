"""What tests wait on and read, written once: a free port, an ASGI app served in a thread, a
condition (sync and async), a job's status, a job's SSE stream (parsed by the SDK's own parser).
Every wait is on a condition with a deadline, never a fixed sleep; the deadline only bounds a failure."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, TypeVar

import httpx

from gpu_orchestrator.client import parse_sse
from gpu_orchestrator.ops.stack import free_port  # noqa: F401 (tests import it from here)

T = TypeVar("T")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})



@contextlib.contextmanager
def served(app: Any) -> Iterator[tuple[str, asyncio.AbstractEventLoop]]:
    """`app` served by uvicorn on a free loopback port, on an event loop of its own in a thread:
    (its base URL, that loop). Work that must run on the loop (closing what the app holds) goes
    before the block ends; the server stops when it ends."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    loop = asyncio.new_event_loop()

    def serve_forever() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.serve())

    t = threading.Thread(target=serve_forever, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            if time.monotonic() > deadline or not t.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}", loop
    finally:
        server.should_exit = True
        t.join(timeout=10)


def wait_terminal(http: httpx.Client, job_id: str, timeout: float = 30) -> dict:
    """The job once terminal (AssertionError after `timeout`)."""
    return wait_status(http, job_id, TERMINAL, timeout)


def wait_for(fn: Callable[[], T], what: str, timeout_s: float = 60, every_s: float = 0.05) -> T:
    """fn()'s first truthy value, polled every `every_s`; AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {timeout_s:g} s: {what}")
        time.sleep(every_s)


async def until(pred: Callable[[], Any] | Callable[[], Awaitable[Any]], timeout_s: float = 15.0,
                what: str = "condition", every_s: float = 0.005) -> Any:
    """The async wait_for: pred may be sync or a coroutine function."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {timeout_s:g} s: {what}")
        await asyncio.sleep(every_s)


def wait_status(http: httpx.Client, job_id: str, statuses: set[str] | frozenset[str] = TERMINAL,
                timeout_s: float = 60) -> dict:
    """The job once its status is one of `statuses` (default: terminal)."""
    last: list[str] = ["no answer"]
    slow: list[str] = []  # polls that got no answer in the client's timeout

    def check() -> dict | None:
        # A poll that times out on a loaded box is "not yet", as for any polling client: the
        # deadline is the wait's own; the failure message lists such polls.
        t = time.monotonic()
        try:
            r = http.get(f"/v1/jobs/{job_id}")
        except httpx.TimeoutException:
            slow.append(f"{time.monotonic() - t:.0f} s")
            return None
        last[:] = [f"{r.status_code} {r.text[:2000]}"]
        return r.json() if r.status_code == 200 and r.json()["status"] in statuses else None

    try:
        return wait_for(check, f"job {job_id} in {sorted(statuses)}", timeout_s)
    except AssertionError as e:
        stalls = f" (polls with no answer: {', '.join(slow)})" if slow else ""
        raise AssertionError(f"{e}: {last[0]}{stalls}{ray_log_lines(job_id)}") from None


def ray_log_lines(needle: str, most: int = 40) -> str:
    """What this process's Ray session logged about `needle` (a job id): the router's and models'
    lines, for a failure message on a box where the logs are gone after the run. Empty outside Ray."""
    try:
        import ray

        if not ray.is_initialized():
            return ""
        logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    except Exception:
        return ""
    lines = []
    for f in sorted(logs.glob("worker-*.err")) + sorted(logs.glob("serve/replica_*.log")):
        with contextlib.suppress(OSError):
            text = f.read_text(errors="replace").splitlines()
            who = next((t.split(":", 2)[2] for t in text[:5] if t.startswith(":actor_name:")), f.name)
            lines += [f"{who} {f.name.rsplit('-', 1)[-1]}: {t}" for t in text if needle in t]
    return ("\nRay's logs about it:\n" + "\n".join(lines[-most:])) if lines else ""


def read_sse(base_or_http: str | httpx.Client, job_id: str, *, last_event_id: str | None = None,
             headers: dict[str, str] | None = None, on_event: Callable[[dict], None] | None = None,
             raw: list[str] | None = None, until: Callable[[dict], bool] | None = None,
             timeout_s: float = 60) -> list[dict]:
    """A job's events ({"id", "event", "data"}) until the server ends the stream (it does after the
    terminal status), or up to the first event `until` accepts. `on_event` sees each as it arrives;
    `raw`, when given, gets every line."""
    h = dict(headers or {})
    if last_event_id:
        h["Last-Event-ID"] = last_event_id
    client = base_or_http if isinstance(base_or_http, httpx.Client) else httpx.Client(base_url=base_or_http)
    events: list[dict] = []
    try:
        with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=h, timeout=timeout_s) as r:
            assert r.status_code == 200, r.read()
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = r.iter_lines()
            if raw is not None:
                lines = (raw.append(line) or line for line in lines)
            for ev in parse_sse(lines):
                events.append(ev)
                if on_event:
                    on_event(ev)
                if until is not None and until(ev):
                    break
    finally:
        if client is not base_or_http:
            client.close()
    return events


def wait_replicas_idle(http: httpx.Client, deployment: str, since: float, timeout_s: float = 60) -> None:
    """Until every replica of the deployment has sent a heartbeat (/v1/workers, every 2 s) written
    after `since` (epoch seconds) saying it has nothing in flight: the work of a job that ended
    before `since` has stopped on the replica, not just in the job's row. (A one-at-a-time model
    counts a run as in flight until its thread has stopped.)"""
    seen: list[list[dict]] = [[]]

    def idle() -> bool:
        models = {m["deployment"]: m for m in http.get("/v1/workers").json()["models"]}
        replicas = seen[0] = models[deployment]["replicas"]
        return bool(replicas) and all(r["last_heartbeat"] > since and not r.get("in_flight") for r in replicas)

    try:
        wait_for(idle, f"every {deployment} replica idle in a heartbeat after {since:.3f}", timeout_s, every_s=0.2)
    except AssertionError as e:
        last = [(r.get("replica_id"), r.get("in_flight"), r.get("last_heartbeat")) for r in seen[0]]
        raise AssertionError(f"{e}; last seen (replica, in flight, heartbeat): {last}") from None
