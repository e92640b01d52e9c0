"""What a user is told while a job waits for its model: the arbiter loop's answer (from the decision
every replica holds), the `waiting` events added to a job's SSE stream, the job's API row, and the
virtual GPU (the demo's) labelled wherever the arbiter's GPUs are shown."""

from __future__ import annotations

import asyncio

from click.testing import CliRunner

from gpu_orchestrator.bus.events import Event
from gpu_orchestrator.cli import admin as cli_admin
from gpu_orchestrator.core.config import parse_config
from gpu_orchestrator.core.jobs import JobStatus
from gpu_orchestrator.service.arbiter.views import model_wait
from gpu_orchestrator.service.fleet import arbiter_view
from gpu_orchestrator.service.waits import with_waits
from tests.unit.test_arbiter_loop import World, run


def load(w: World, a, model: str) -> None:
    """A job for `model`, the arbiter's load decision, its replica running a second later."""
    w.submit(model)
    run(a.tick())
    w.cluster.running(model)
    w.clock.advance(1.0)
    run(a.tick())


def test_a_queued_job_is_told_its_model_loads_and_about_how_long():
    w = World()
    a, _, _ = w.router("router-a")
    assert a.waiting_for("echo-a")["message"] == "waiting for echo-a: the GPU arbiter has not decided yet"
    w.submit("echo-a")
    run(a.tick())
    wait = a.waiting_for("echo-a")
    assert wait == {"model": "echo-a", "state": "loading", "about_s": 2, "message": "waiting for echo-a to load (about 2 s)"}
    w.clock.advance(1.5)
    run(a.tick())
    assert a.waiting_for("echo-a")["about_s"] == 1  # counts down from the expected load time, at least 1 s
    w.cluster.running("echo-a")
    w.clock.advance(2.0)
    run(a.tick())
    assert a.waiting_for("echo-a") is None  # it takes work now
    # The measured load (3.5 s from decision to a running replica) is what the next wait quotes.
    assert a.snapshot.models["echo-a"]["load_measured_s"] == 3.5
    assert a.snapshot.history[-1][1] == "echo-a loaded in 3.5 s"


def test_a_model_that_must_wait_for_room_says_why():
    w = World()
    a, _, _ = w.router("router-a")
    load(w, a, "echo-a")
    # echo-a busy (its job in flight): echo-b (14 GB) cannot join it on the 24 GB GPU
    assert w.store.claim(app_id="echo-a", owner="router-a", limit=1, lease_s=60, max_in_flight=4)
    w.submit("echo-b")
    w.clock.advance(1.0)
    run(a.tick())
    wait = a.waiting_for("echo-b")
    assert wait["state"] == "cold" and wait["about_s"] == 2
    assert wait["message"].startswith("waiting for echo-b to be loaded (about 2 s once it has room): echo-b waits")


def test_a_model_waiting_for_another_to_unload_or_that_can_never_fit_is_told_so():
    w = World(min_resident_s=0)
    a, _, _ = w.router("router-a")
    load(w, a, "echo-a")
    jobs, _ = w.store.list(app_id="echo-a")
    w.store.cancel(jobs[0].id)  # echo-a's work is gone: it idles
    w.submit("echo-b")  # 14 GB: echo-a (16, idle) is evicted for it
    w.clock.advance(1.0)
    run(a.tick())
    w.cluster.states["echo-a"] = {"STOPPING": 1}  # Serve stops its replica: the memory is not free yet
    w.clock.advance(0.5)
    run(a.tick())
    assert a.snapshot.models["echo-a"]["state"] == "stopping"
    wait = a.waiting_for("echo-b")
    assert wait["state"] == "making_room"
    assert wait["message"] == "waiting for echo-a (16 GB) to unload, then echo-b loads (about 2 s)"
    w.submit("echo-huge")  # 30 GB on a 24 GB GPU
    w.clock.advance(0.5)
    run(a.tick())
    assert a.waiting_for("echo-huge") == {"model": "echo-huge", "state": "cannot_place", "about_s": None,
                                          "message": "cannot place echo-huge: needs 30 GB, largest allowed GPU has 24 GB"}


def test_model_wait_without_a_decision_and_for_a_dispatchable_model():
    from gpu_orchestrator.bus.decisions import Snapshot

    snap = Snapshot(ts=0, leader="x", targets={"m": 1}, dispatchable=["m"], draining=[], reasons=[])
    assert model_wait(snap, "m", 1.0) is None
    assert model_wait(None, "m", 1.0)["state"] == "unknown"


class Waits:
    def __init__(self, answers):
        self.answers = list(answers)
        self.asked = []

    def waiting_for(self, job, status=None):
        self.asked.append(status)
        return self.answers.pop(0) if self.answers else None


class Job:
    status = JobStatus.queued


async def _events(items):
    for i in items:
        yield i


def _collect(gen):
    async def go():
        return [e async for e in gen]
    return asyncio.run(go())


def test_the_stream_says_what_a_queued_job_waits_for_when_it_changes():
    loading = {"model": "sdxl", "state": "loading", "about_s": 9, "message": "waiting for sdxl to load (about 9 s)"}
    later = {**loading, "about_s": 4, "message": "waiting for sdxl to load (about 4 s)"}
    queued = Event("1-0", "status", {"status": "queued"})
    running = Event("2-0", "status", {"status": "running"})
    done = Event("3-0", "status", {"status": "succeeded"})
    waits = Waits([loading, loading, later])
    out = _collect(with_waits(waits, Job(), _events([queued, None, None, running, None, done])))
    kinds = [(e.type, e.id, e.data.get("message")) if e is not None else None for e in out]
    assert kinds == [
        ("status", "1-0", None),
        ("waiting", "1-0", "waiting for sdxl to load (about 9 s)"),  # at once, after the queued status
        None,  # the same wait: a keep-alive, not a repeat
        ("waiting", "1-0", "waiting for sdxl to load (about 4 s)"),  # carries the last real event's id
        ("status", "2-0", None),
        None,
        ("status", "3-0", None),
    ]
    assert waits.asked == [JobStatus.queued] * 3  # not asked once it runs


def test_a_replayed_stream_of_a_job_that_ran_tells_no_wait():
    """Following a job that already runs (or ran) replays its old `queued` event: what its model does
    now is no wait of its; only once the replay has caught up does a (re)queued job get waits."""
    loading = {"model": "sdxl", "state": "loading", "about_s": 9, "message": "waiting for sdxl to load (about 9 s)"}

    class Running:
        status = JobStatus.running

    queued = Event("1-0", "status", {"status": "queued"})
    running = Event("2-0", "status", {"status": "running"})
    requeued = Event("3-0", "status", {"status": "queued"})
    waits = Waits([loading])
    out = _collect(with_waits(waits, Running(), _events([queued, running, None, requeued])))
    assert [e.type if e else None for e in out] == ["status", "status", None, "status", "waiting"]
    assert out[-1].id == "3-0" and waits.asked == [JobStatus.queued]


def test_virtual_gpu_is_labelled_in_workers_and_arbiter_output(monkeypatch):
    args = {"apps": [{"id": "a", "deployment": "a"}], "profile": "demo",
            "models": {"a": {"impl": "deployments.echo:Echo", "vram_gb": 16, "demo": {}}},
            "demo": {"virtual_gpu_gb": 32}}
    w = World()
    w.cfg = parse_config(args)
    a, _, _ = w.router("router-a")
    w.submit("a")
    run(a.tick())
    w.cluster.states["a"] = {"STARTING": 1}
    run(a.tick())
    view = arbiter_view(a.snapshot)
    assert view["gpus"] == {"virtual-gpu0": {"vram_gb": 32.0, "held_gb": 16.0, "virtual": True}}
    data = {"arbiter": view, "models": [{"deployment": "a", "state": "loading", "vram_declared_gb": 16,
                                         "arbiter": a.snapshot.models["a"]}]}
    assert cli_admin._gpu_lines(data) == [
        "gpu virtual-gpu0 VIRTUAL (accounting only: the models run on CPU): 16 of 32 GB held: a (loading)"]

    class FakeHttp:
        def get(self, path):
            class R:
                def json(self):
                    return data
            return R()

    class FakeClient:
        http = FakeHttp()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(cli_admin, "_client", lambda ctx: FakeClient())
    r = CliRunner().invoke(cli_admin.arbiter, [])
    assert r.exit_code == 0, r.output
    assert "VIRTUAL" in r.output and "10 s expected (not loaded yet)" in r.output  # the declared load_s
    assert "load a on virtual-gpu0" in r.output


def test_an_idle_arbiter_looks_rarely_and_a_submit_wakes_it():
    from gpu_orchestrator.service.arbiter.views import quiet

    w = World(idle_tick_s=5.0, tick_s=0.01)
    a, _, _ = w.router("router-a")
    looks = []  # each leader tick reads the queue once
    read = w.store.queue_stats
    w.store.queue_stats = lambda: looks.append(1) or read()

    async def scenario():
        a.start()
        try:
            while a.snapshot is None:
                await asyncio.sleep(0.01)
            assert quiet(a.snapshot)  # nothing queued, nothing loaded: the next look is 5 s away
            await asyncio.sleep(0.05)
            seen = len(looks)
            w.submit("echo-a")
            await asyncio.sleep(0.2)
            assert len(looks) == seen  # still asleep: at tick_s it would have looked 20 times
            a.poke()  # what the router does when a job is queued while the arbiter is quiet
            for _ in range(100):
                await asyncio.sleep(0.01)
                if a.snapshot.targets.get("echo-a") == 1:
                    break
            assert a.snapshot.targets["echo-a"] == 1 and not quiet(a.snapshot)  # loading: ticks every tick_s
        finally:
            await a.stop()

    asyncio.run(scenario())
