"""The arbiter loop without Postgres, Redis or Ray: an in-memory store (its leader lock too), the
in-memory decision board, a fake cluster and a fake clock. Each test drives `tick()` by hand."""

from __future__ import annotations

import asyncio

import pytest

from gpu_orchestrator.bus.decisions import MemoryDecisionBoard, Snapshot
from gpu_orchestrator.core.config import ArbiterSpec, GpuPoolSpec, parse_config
from gpu_orchestrator.core.policy import decide
from gpu_orchestrator.core.policy_types import Gpu, ModelView, PolicyConfig, Verb
from gpu_orchestrator.service.arbiter.loop import LEADER_LOCK_KEY, STALE_AFTER_S, ArbiterLoop
from gpu_orchestrator.service.arbiter.ports import CountingArbiterMetrics, Node
from gpu_orchestrator.service.arbiter.views import Pools, gpu_pools, packing_warnings, placement
from gpu_orchestrator.store.memory import MemoryJobStore

T0 = 1_700_000_000.0
HUGE_WHY = "cannot place echo-huge: needs 30 GB, largest allowed GPU has 24 GB"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, s: float) -> None:
        self.now += s


class FakeCluster:
    """Serve's replica states as the test sets them; one 24 GB GPU node."""

    def __init__(self) -> None:
        self.states: dict[str, dict[str, int]] = {}
        self.node_list = [Node("node-1", {"GPU": 1.0, "vram_gb": 24.0})]

    def running(self, model: str, n: int = 1) -> None:
        self.states[model] = {"RUNNING": n} if n else {}

    def replica_states(self) -> dict[str, dict[str, int]]:
        return {k: dict(v) for k, v in self.states.items()}

    def nodes(self) -> list[Node]:
        return list(self.node_list)


class FakeBeats:
    def __init__(self) -> None:
        self.beats: list[dict] = []

    async def read_all(self) -> list[dict]:
        return list(self.beats)


class BrokenLock:
    def hold(self) -> bool:
        raise ConnectionError("database gone")

    def release(self) -> None:
        pass


def config(**arbiter):
    models = {"echo-a": 16, "echo-b": 14, "echo-c": 12, "echo-huge": 30}
    return parse_config({
        "apps": [{"id": m, "deployment": m} for m in models],
        "models": {m: {"impl": "deployments.echo:Echo", "vram_gb": v, "load_s": 2.0} for m, v in models.items()},
        "arbiter": {"enabled": True, **arbiter},
    })


class World:
    """One database, one board, one cluster, shared by every router replica's loop."""

    def __init__(self, **arbiter) -> None:
        self.cfg = config(**arbiter)
        self.clock = Clock()
        self.store = MemoryJobStore(clock=self.clock)
        self.board = MemoryDecisionBoard(clock=self.clock)
        self.cluster = FakeCluster()
        self.beats = FakeBeats()

    def router(self, name: str, *, lock=None):
        metrics = CountingArbiterMetrics()
        pokes: list[int] = []
        loop = ArbiterLoop(cfg=self.cfg, store=self.store, lock=lock or self.store.leader_lock(LEADER_LOCK_KEY),
                           board=self.board, cluster=self.cluster, heartbeats=self.beats, owner=name,
                           metrics=metrics, on_change=lambda: pokes.append(1), clock=self.clock)
        return loop, metrics, pokes

    def submit(self, app_id: str, priority: int = 0) -> None:
        self.store.submit(app_id=app_id, params={}, priority=priority)


def run(coro):
    return asyncio.run(coro)


def test_leader_publishes_and_a_follower_acts_on_its_decision():
    w = World()
    a, _, _ = w.router("router-a")
    b, _, b_pokes = w.router("router-b")
    w.submit("echo-a")
    run(a.tick())
    run(b.tick())
    assert a.is_leader and not b.is_leader
    assert b.snapshot == a.snapshot and b.snapshot.leader == "router-a"
    assert a.snapshot.targets == {"echo-a": 1, "echo-b": 0, "echo-c": 0, "echo-huge": 0}
    assert a.snapshot.reasons == ["load echo-a on node-1: 1 queued, 24 GB free"]  # the pool discovered from the node
    # Loading: a target, but no replica yet, so nothing is dispatchable anywhere.
    assert not a.dispatchable("echo-a") and not b.dispatchable("echo-a")
    assert a.snapshot.models["echo-a"]["state"] == "loading"

    w.cluster.running("echo-a")
    w.clock.advance(1.0)
    run(a.tick())
    run(b.tick())
    assert a.dispatchable("echo-a") and b.dispatchable("echo-a")
    assert b_pokes == [1]  # the follower's dispatcher is woken when residency changes
    assert a.snapshot.models["echo-a"]["state"] == "resident"


def test_gate_opens_only_for_models_the_decision_made_resident():
    w = World()
    a, _, _ = w.router("router-a")
    # Resident by the decision: dispatchable. Cold ones and unknown names: not.
    w.submit("echo-a")
    run(a.tick())
    w.cluster.running("echo-a")
    run(a.tick())
    assert a.dispatchable("echo-a")
    assert not a.dispatchable("echo-b") and not a.dispatchable("echo-c") and not a.dispatchable("nope")

    # A higher-priority job for a model that does not fit beside echo-a: echo-a has a job running,
    # so it drains (no new work) instead of being evicted.
    w.store.claim(app_id="echo-a", owner="router-a", limit=1, lease_s=60, max_in_flight=4)
    w.submit("echo-a")
    w.submit("echo-b", priority=5)
    run(a.tick())
    assert a.snapshot.draining == ["echo-a"] and not a.dispatchable("echo-a")
    assert a.snapshot.models["echo-a"]["state"] == "draining"
    assert a.snapshot.models["echo-a"]["last_decision"].startswith("drain echo-a (1 queued, 1 running) for echo-b")
    # The model the room is made for shows the same decision as its last one.
    assert a.snapshot.models["echo-b"]["last_decision"] == a.snapshot.models["echo-a"]["last_decision"]


def test_stale_snapshot_gates_everything_off():
    w = World()
    a, _, _ = w.router("router-a")
    b, _, _ = w.router("router-b")
    w.submit("echo-a")
    w.cluster.running("echo-a")
    run(a.tick())
    run(b.tick())
    assert a.dispatchable("echo-a") and b.dispatchable("echo-a")
    w.clock.advance(STALE_AFTER_S)  # the leader stopped publishing
    assert not a.dispatchable("echo-a") and not b.dispatchable("echo-a")
    # A follower reading a board whose leader went quiet keeps nothing either.
    run(b.tick())
    assert not b.dispatchable("echo-a")


def test_unplaceable_model_is_reported_with_the_reason_once_due():
    w = World()
    a, _, _ = w.router("router-a")
    b, _, _ = w.router("router-b")
    w.submit("echo-huge")
    run(a.tick())
    assert HUGE_WHY in a.snapshot.reasons
    assert a.unplaceable("echo-huge") is None  # not before its oldest job waited max_wait_s
    w.clock.advance(61.0)
    run(a.tick())
    run(b.tick())
    assert a.unplaceable("echo-huge") == HUGE_WHY and b.unplaceable("echo-huge") == HUGE_WHY
    assert a.unplaceable("echo-a") is None and a.snapshot.targets["echo-huge"] == 0
    w.clock.advance(STALE_AFTER_S)
    assert b.unplaceable("echo-huge") is None  # a stale decision refuses nothing


def test_loads_evictions_and_load_time_go_through_the_metrics():
    w = World(idle_ttl_s=5.0)
    a, metrics, _ = w.router("router-a")
    w.submit("echo-a")
    run(a.tick())
    assert metrics.loads == {"echo-a": 1} and not metrics.evictions
    w.clock.advance(3.5)
    w.cluster.running("echo-a")
    run(a.tick())
    assert metrics.load_times == {"echo-a": [3.5]}  # decision to running replica
    assert a.snapshot.models["echo-a"]["load_s"] == 3.5  # the measured time replaces the declared one
    # Its job ends; after the idle TTL it scales to zero: an eviction.
    (job,) = w.store.claim(app_id="echo-a", owner="router-a", limit=1, lease_s=60, max_in_flight=4)
    w.store.complete(job_id=job.id, owner="router-a", attempt=job.claims, result={}, backend="echo-a")
    w.beats.beats = [{"deployment": "echo-a", "replica_id": "r1", "node_id": "node-1", "last_used": w.clock.now}]
    w.clock.advance(6.0)
    run(a.tick())
    assert metrics.evictions == {"echo-a": 1} and metrics.loads == {"echo-a": 1}
    m = a.snapshot.models["echo-a"]
    assert (m["loads"], m["evictions"], m["target"]) == (1, 1, 0)
    assert m["last_decision"] == "scale echo-a to zero: idle 6 s >= ttl 5 s"
    assert m["last_decision_at"] == w.clock.now
    # The admin page's "recent decisions": each action once, oldest first, with its time.
    history = a.snapshot.history
    assert [t for _, t in history][-1] == "scale echo-a to zero: idle 6 s >= ttl 5 s" and history[-1][0] == w.clock.now
    assert [t for _, t in history][1] == "echo-a loaded in 3.5 s" and len(history) == 3
    assert history[0][1].startswith("load echo-a")


def test_losing_the_lock_stops_leading_and_another_replica_takes_over():
    w = World()
    a, _, _ = w.router("router-a")
    b, _, _ = w.router("router-b")
    w.submit("echo-a")
    run(a.tick())
    assert a.is_leader and w.board.publishes == 1
    w.store.available = False  # a's database connection drops: the lock goes with it
    run(a.tick())
    assert not a.is_leader and w.board.publishes == 1
    w.store.available = True
    run(b.tick())
    run(a.tick())
    assert b.is_leader and not a.is_leader
    assert a.snapshot.leader == "router-b" and w.board.publishes == 2


def test_a_lock_that_raises_means_not_leading():
    w = World()
    a, _, _ = w.router("router-a", lock=BrokenLock())
    w.submit("echo-a")
    run(a.tick())
    assert not a.is_leader and a.snapshot is None and w.board.publishes == 0


def test_stop_hands_leadership_over():
    w = World()
    a, _, _ = w.router("router-a")
    b, _, _ = w.router("router-b")

    async def scenario():
        a.start()
        await asyncio.sleep(0.05)
        assert a.is_leader
        await a.stop()
        await b.tick()

    run(scenario())
    assert b.is_leader and not a.is_leader


def test_stop_releases_a_lock_taken_without_is_leader_being_set():
    # A hold() still running in its worker thread when stop() cancelled the tick takes the lock, but
    # the cancelled tick never sets is_leader: stop() must release it anyway.
    w = World()
    a, _, _ = w.router("router-a")
    b, _, _ = w.router("router-b")
    assert a.lock.hold() and not a.is_leader  # what the orphaned thread did

    async def scenario():
        await b.tick()
        assert not b.is_leader  # a holds the lock
        await a.stop()
        await b.tick()

    run(scenario())
    assert b.is_leader and not a.is_leader


def test_stop_without_ever_ticking_releases_harmlessly():
    w = World()
    a, _, _ = w.router("router-a")
    b, _, _ = w.router("router-b")
    run(a.stop())
    run(b.tick())
    assert b.is_leader and not a.is_leader


def test_snapshot_survives_the_board_as_json():
    s = Snapshot(ts=T0, leader="r", targets={"a": 1}, dispatchable=["a"], draining=[], reasons=["load a"],
                 models={"a": {"idle_s": None, "placement": ["gpu0"]}}, unplaceable={"b": "why"})
    assert Snapshot.from_json(s.to_json()) == s
    clock = Clock()
    board = MemoryDecisionBoard(ttl_s=30, clock=clock)
    run(board.publish(s))
    assert run(board.read()) == s
    clock.advance(30)
    assert run(board.read()) is None  # expired, as the Redis key would


def test_swap_ins_spend_the_budget_and_the_next_busy_swap_waits_for_credit():
    w = World(swap_budget=0.1, swap_window_s=40.0, max_wait_s=30.0, min_resident_s=0.0)  # a 4 s allowance
    a, _, _ = w.router("router-a")
    for _ in range(20):
        w.submit("echo-a")
    run(a.tick())
    w.clock.advance(2.0)  # each load takes 2 s (measured: decision to running replica)
    w.cluster.running("echo-a")
    run(a.tick())
    assert a.snapshot.swap_credit_s == {"node-1": 4.0}  # a load into free memory costs nothing
    w.store.claim(app_id="echo-a", owner="router-a", limit=1, lease_s=600, max_in_flight=4)
    w.submit("echo-b")
    w.clock.advance(40.0)  # echo-b is due; echo-a still has 19 queued and one running
    run(a.tick())
    assert a.snapshot.draining == ["echo-a"]  # a full bucket pays for the round trip (2 + 2 s)
    (job,) = [j for j in w.store.list(app_id="echo-a", status="running", limit=5)[0]]
    w.store.complete(job_id=job.id, owner="router-a", attempt=job.claims, result={}, backend="echo-a")
    run(a.tick())  # drained: echo-a goes
    texts = [t for _, t in a.snapshot.history]
    assert len(texts) == len(set(texts)) and any("echo-a" in t and "echo-b" in t for t in texts)  # one action, two models: once
    w.cluster.running("echo-a", 0)
    run(a.tick())  # the memory is free: echo-b loads, a swap-in paid from the credit
    assert a.snapshot.targets["echo-b"] == 1
    assert a.snapshot.swap_credit_s == {"node-1": 2.0}
    # echo-b resident and busy; echo-a waits for the GPU with credit for less than the round trip.
    w.clock.advance(2.0)
    w.cluster.running("echo-b")
    run(a.tick())
    w.store.claim(app_id="echo-b", owner="router-a", limit=1, lease_s=600, max_in_flight=4)
    w.submit("echo-b")
    w.store.claim(app_id="echo-b", owner="router-a", limit=0, lease_s=600, max_in_flight=4)
    w.clock.advance(3.0)
    run(a.tick())
    assert a.snapshot.targets["echo-a"] == 0 and not a.snapshot.draining
    assert any(r.startswith("echo-a waits: 19 queued") and "swap budget on node-1 has 2.5 s of the 4.0 s" in r
               for r in a.snapshot.reasons)
    w.clock.advance(15.0)  # credit refills at 0.1 s per second
    run(a.tick())
    assert a.snapshot.draining == ["echo-b"]


def test_a_replica_serve_starts_against_a_target_of_zero_is_not_adopted():
    w = World()
    a, metrics, _ = w.router("router-a")
    w.submit("echo-a")
    run(a.tick())
    w.cluster.running("echo-a")
    run(a.tick())
    (job,) = w.store.claim(app_id="echo-a", owner="router-a", limit=1, lease_s=60, max_in_flight=4)
    w.store.complete(job_id=job.id, owner="router-a", attempt=job.claims, result={}, backend="echo-a")
    w.submit("echo-b")
    run(a.tick())
    assert a.snapshot.targets["echo-a"] == 0  # idle: evicted for echo-b
    # Serve stops it, then its cold-start fast path starts it again (recent requests in its window).
    w.cluster.states["echo-a"] = {"STOPPING": 1, "STARTING": 1}
    run(a.tick())
    assert a.snapshot.targets == {"echo-a": 0, "echo-b": 0, "echo-c": 0, "echo-huge": 0}
    assert metrics.loads == {"echo-a": 1}  # not counted as a load of the arbiter's
    assert any(r.startswith("echo-b waits") for r in a.snapshot.reasons)  # its memory still counts
    w.cluster.states["echo-a"] = {}
    run(a.tick())
    assert a.snapshot.targets["echo-b"] == 1


class LosableLock:
    """A replica's leader lock that the test can take away (a database blip) and give back."""

    def __init__(self, store):
        self.store, self.lost = store, False
        self.inner = store.leader_lock(LEADER_LOCK_KEY)

    def hold(self) -> bool:
        if self.lost:
            self.inner.release()
            return False
        return self.inner.hold()

    def regain(self) -> None:
        self.lost, self.inner = False, self.store.leader_lock(LEADER_LOCK_KEY)

    def release(self) -> None:
        self.inner.release()


def test_a_leader_that_regains_the_lock_adopts_what_the_other_leader_loaded():
    w = World()
    lock = LosableLock(w.store)
    a, _, _ = w.router("router-a", lock=lock)
    b, _, _ = w.router("router-b")
    run(a.tick())  # a leads; nothing to do: echo-a's target is 0 in a's tracks
    assert a.is_leader and a.snapshot.targets["echo-a"] == 0
    lock.lost = True
    run(a.tick())
    assert not a.is_leader
    w.submit("echo-a")
    w.submit("echo-a")
    run(b.tick())
    assert b.is_leader and b.snapshot.targets["echo-a"] == 1  # b loads echo-a
    w.cluster.running("echo-a")
    run(b.tick())
    w.store.claim(app_id="echo-a", owner="router-b", limit=1, lease_s=60, max_in_flight=4)
    run(b.stop())
    lock.regain()
    run(a.tick())  # a leads again: echo-a is resident with work, not a replica to disown
    assert a.is_leader and a.snapshot.targets["echo-a"] == 1 and a.dispatchable("echo-a")
    assert a.snapshot.models["echo-a"]["state"] == "resident"


# -- the pure parts --------------------------------------------------------------------------------


def test_discovered_pools_one_per_gpu():
    nodes = [Node("aaaaaaaaaaaaaaaa", {"GPU": 1.0, "vram_gb": 80.0, "node_type:h100": 1.0}),
             Node("bbbbbbbbbbbbbbbb", {"GPU": 1.0}), Node("cccc", {"CPU": 8.0})]
    p = gpu_pools(nodes, ArbiterSpec(default_gpu_vram_gb=24.0))
    assert p.gpus == [Gpu("h100", 80.0, "h100"), Gpu("bbbbbbbbbbbb", 24.0, "")]
    assert p.node_pools == {"aaaaaaaaaaaaaaaa": ("h100",), "bbbbbbbbbbbbbbbb": ("bbbbbbbbbbbb",)}


def test_a_node_with_several_gpus_is_a_pool_per_gpu():
    """Two 24 GB GPUs are not one 48 GB pool: a 30 GB model fits on neither, and two 16 GB models
    go to different GPUs."""
    nodes = [Node("n1aaaaaaaaaa", {"GPU": 2.0, "vram_gb": 48.0, "node_type:l4": 1.0}),
             Node("n2aaaaaaaaaa", {"GPU": 2.0, "node_type:l4": 1.0})]
    p = gpu_pools(nodes, ArbiterSpec(default_gpu_vram_gb=24.0))
    assert [g.id for g in p.gpus] == ["l4@n1aaaaaa:0", "l4@n1aaaaaa:1", "l4@n2aaaaaa:0", "l4@n2aaaaaa:1"]
    assert {g.vram_gb for g in p.gpus} == {24.0} and {g.node_type for g in p.gpus} == {"l4"}
    assert p.pool_of("n1aaaaaaaaaa", 1) == "l4@n1aaaaaa:1" and p.pool_of("n1aaaaaaaaaa", None) is None
    one = gpu_pools(nodes[:1], ArbiterSpec())
    d = decide([ModelView("big", 30, queued=1, oldest_wait_s=1)], one.gpus, PolicyConfig())
    assert d.targets["big"] == 0 and "cannot place big: needs 30 GB, largest allowed GPU has 24 GB" in d.reasons
    d = decide([ModelView("a", 16, queued=1, oldest_wait_s=2), ModelView("b", 16, queued=1, oldest_wait_s=1)],
               one.gpus, PolicyConfig())
    assert d.placements == {"a": ("l4:0",), "b": ("l4:1",)}
    # 10 GB free on each GPU (20 GB in all) is no room for a 16 GB model: an idle model is evicted.
    views = [ModelView("x", 14, replicas=1, placement=("l4:0",), idle_s=5.0, resident_s=60),
             ModelView("y", 14, replicas=1, placement=("l4:1",), queued=3, in_flight=1, resident_s=60),
             ModelView("w", 16, queued=1, oldest_wait_s=1)]
    d = decide(views, one.gpus, PolicyConfig())
    assert d.targets == {"x": 0, "y": 1, "w": 0} and [a.verb for a in d.actions] == [Verb.evict]
    assert d.actions[0].gpus == ("l4:0",)


def test_shares_below_the_vram_share_of_a_gpu_are_reported_where_nodes_have_several():
    cfg = parse_config({"arbiter": {"enabled": True}, "models": {
        "a": {"impl": "m:A", "num_gpus": 0.2, "vram_gb": 16}, "b": {"impl": "m:B", "num_gpus": 0.5, "vram_gb": 12}},
        "apps": []})
    two = gpu_pools([Node("n", {"GPU": 2.0, "vram_gb": 48.0})], cfg.arbiter)
    (w,) = packing_warnings(cfg, two)
    assert w.startswith("models.a.num_gpus 0.2 is below its VRAM's share of a 24 GB GPU (16/24 = 0.67)")
    assert packing_warnings(cfg, gpu_pools([Node("n", {"GPU": 1.0, "vram_gb": 24.0})], cfg.arbiter)) == []


def test_declared_pools_match_nodes_by_type():
    spec = ArbiterSpec(gpus=[GpuPoolSpec(id="big", vram_gb=80, node_type="h100"),
                             GpuPoolSpec(id="small", vram_gb=24, node_type="l4")])
    nodes = [Node("n1", {"node_type:l4": 1.0}), Node("n2", {"node_type:h100": 1.0}), Node("n3", {})]
    p = gpu_pools(nodes, spec)
    assert [g.id for g in p.gpus] == ["big", "small"] and p.node_pools == {"n1": ("small",), "n2": ("big",)}
    # One declared pool takes every node.
    one = gpu_pools(nodes, ArbiterSpec(gpus=[GpuPoolSpec(id="gpu0", vram_gb=24)]))
    assert one.node_pools == {"n1": ("gpu0",), "n2": ("gpu0",), "n3": ("gpu0",)}


def test_placement_from_heartbeats_then_the_last_decision():
    pools = Pools([Gpu("big", 80), Gpu("small", 24)], {"n1": ("small",), "n2": ("big",)})
    assert placement(0, [("n1", None)], pools, ("big",)) == ()
    assert placement(1, [("n1", None)], pools, ("big",)) == ("small",)
    assert placement(2, [("n1", None)], pools, ("big", "big")) == ("small", "big")
    assert placement(1, [], pools, ("big",)) == ("big",)
    assert placement(2, [], Pools([Gpu("gpu0", 24)]), ()) == ("gpu0", "gpu0")
    # A node with two GPUs: the replica's GPU index says which (Ray chose it, not the arbiter).
    two = Pools([Gpu("n:0", 24), Gpu("n:1", 24)], {"n": ("n:0", "n:1")})
    assert placement(1, [("n", 1)], two, ("n:0",)) == ("n:1",)
    assert placement(1, [("n", None)], two, ("n:0",)) == ("n:0",)


@pytest.mark.parametrize("module", ["gpu_orchestrator.service.arbiter.loop", "gpu_orchestrator.serve.autoscaling"])
def test_no_ray_database_or_redis_behind_the_loop_and_the_policy_function(module):
    import subprocess
    import sys

    code = (f"import sys, {module}; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'redis', 'sqlalchemy'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_new_leader_starts_from_the_load_times_earlier_leaders_measured():
    """Measured load times outlive a leader's term (the board keeps them with no TTL): a replica
    that takes over, even one started after every router was gone, weighs swaps with them, not
    with the declared figure."""
    w = World()
    a, _, _ = w.router("router-a")
    w.submit("echo-a")
    run(a.tick())
    w.clock.advance(3.5)
    w.cluster.running("echo-a")
    run(a.tick())
    assert a.snapshot.models["echo-a"]["load_s"] == 3.5
    assert run(w.board.loads()) == {"echo-a": 3.5}
    run(a.stop())
    w.clock.advance(120.0)  # the decision itself has expired: a restart of every router
    b, _, _ = w.router("router-b")  # a fresh replica: it never saw echo-a load
    run(b.tick())
    assert b.is_leader
    assert b.snapshot.models["echo-a"]["load_s"] == 3.5 and b.snapshot.models["echo-b"]["load_s"] == 2.0


def test_load_times_the_board_could_not_keep_are_kept_for_the_next_tick():
    w = World()

    class Flaky(MemoryDecisionBoard):
        down = True

        async def remember_load(self, model, seconds):
            if self.down:
                raise ConnectionError("redis gone")
            await super().remember_load(model, seconds)

    w.board = Flaky(clock=w.clock)
    a, _, _ = w.router("router-a")
    w.submit("echo-a")
    run(a.tick())
    w.clock.advance(2.5)
    w.cluster.running("echo-a")
    run(a.tick())  # measured, but the board is away
    assert run(w.board.loads()) == {}
    w.board.down = False
    run(a.tick())
    assert run(w.board.loads()) == {"echo-a": 2.5}


# -- the warm tier: the leader parks instead of stopping, and wakes -----------------------------------

class ParkingBackend:
    """A model replica's park and wake as the leader calls them (through its backend)."""

    def __init__(self, name: str, calls: list, host_gb: float, clock: Clock) -> None:
        self.name, self.calls, self.host_gb, self.clock = name, calls, host_gb, clock

    async def park(self) -> dict:
        self.calls.append(("park", self.name))
        return {"parked": True, "state": "warm", "seconds": 0.1, "host_gb": self.host_gb,
                "replica_id": f"{self.name}-r1", "at": self.clock.now}

    async def wake(self) -> dict:
        self.calls.append(("wake", self.name))
        self.clock.advance(0.25)  # the copy back to the GPU
        return {"state": "resident", "seconds": 0.25, "replica_id": f"{self.name}-r1", "at": self.clock.now}


def warm_world(budget_gb: float):
    w = World(min_resident_s=0.0, warm={"enabled": True, "host_budget_gb": budget_gb})
    calls: list = []
    backends = {m: ParkingBackend(m, calls, v, w.clock) for m, v in {"echo-a": 16.0, "echo-b": 14.0}.items()}
    metrics = CountingArbiterMetrics()
    loop = ArbiterLoop(cfg=w.cfg, store=w.store, lock=w.store.leader_lock(LEADER_LOCK_KEY), board=w.board,
                       cluster=w.cluster, heartbeats=w.beats, owner="router-a", metrics=metrics, clock=w.clock,
                       backends=backends)
    return w, loop, calls, metrics


def beat(w, model: str, state: str, host_gb: float = 0.0) -> dict:
    return {"deployment": model, "replica_id": f"{model}-r1", "node_id": "node-1", "state": state,
            "last_used": w.clock.now - 1, "last_heartbeat": w.clock.now, "host_total_gb": 64.0,
            "host_free_gb": 40.0, "host_held_gb": host_gb}


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


def finish_jobs(w, app_id: str) -> None:
    for job in w.store.claim(app_id=app_id, owner="router-a", limit=10, lease_s=60, max_in_flight=10):
        w.store.complete(job_id=job.id, owner="router-a", attempt=job.claims, result={}, backend=app_id)


async def a_ran_then_b_queued(w, a, load_s: float = 0.0) -> None:
    """echo-a loads (in load_s), runs its job and is idle on node-1; then echo-b's job is queued."""
    w.submit("echo-a")
    await a.tick()
    w.clock.advance(load_s)
    w.cluster.running("echo-a")
    w.beats.beats = [beat(w, "echo-a", "resident")]
    await a.tick()
    finish_jobs(w, "echo-a")
    w.submit("echo-b")


def test_an_evicted_model_parks_keeps_its_replica_and_wakes_for_its_next_job():
    from gpu_orchestrator.serve.autoscaling import encode

    w, a, calls, metrics = warm_world(budget_gb=40.0)

    async def scenario():
        # echo-b's job: echo-a (16 GB) and echo-b (14 GB) do not fit one 24 GB GPU together.
        await a_ran_then_b_queued(w, a, load_s=2.0)
        w.clock.advance(1.0)
        await a.tick()
        s = a.snapshot
        assert s.targets["echo-a"] == 0 and s.parked == ["echo-a"]
        assert encode(s, True)["target:echo-a"] == 1.0  # Serve keeps its replica up
        await settle()
        assert calls == []  # not yet: a follower may still act on the decision before this one
        w.clock.advance(0.5)
        await a.tick()
        await settle()
        assert calls == [("park", "echo-a")]
        # Parked (the heartbeat has not caught up; the park's answer is newer): no VRAM held, echo-b loads.
        w.clock.advance(0.5)
        await a.tick()
        s = a.snapshot
        assert s.targets["echo-b"] == 1 and s.models["echo-a"]["state"] == "warm"
        w.cluster.running("echo-b")
        w.beats.beats = [beat(w, "echo-a", "warm", 16.0), beat(w, "echo-b", "resident")]
        w.clock.advance(1.0)
        await a.tick()
        assert a.snapshot.hosts["node-1"]["held_gb"] == 16.0 and a.snapshot.hosts["node-1"]["budget_gb"] == 40.0
        finish_jobs(w, "echo-b")
        # echo-a's next job: echo-b parks too (30 GB of a 40 GB budget), then echo-a wakes.
        w.submit("echo-a")
        w.clock.advance(1.0)
        await a.tick()
        w.clock.advance(0.5)
        await a.tick()
        await settle()
        assert calls[-1] == ("park", "echo-b") and a.snapshot.parked == ["echo-a", "echo-b"]
        w.clock.advance(0.5)
        await a.tick()
        assert a.snapshot.targets["echo-a"] == 1
        assert a.dispatchable("echo-a")  # at once: its replica is up, and its first job wakes it
        await settle()
        assert calls[-1] == ("wake", "echo-a")
        # The warm load: from the decision to the replica's answer that it woke.
        assert metrics.warm_loads["echo-a"] == 1 and metrics.warm_times["echo-a"] == [0.25]
        assert a.book.tracks["echo-a"].measured_warm_s == 0.25
        assert a.book.measured["echo-a@warm"] == 0.25  # for the board (next tick), for the next leader
        assert encode(a.snapshot, True)["target:echo-b"] == 1.0

    run(scenario())


def test_a_model_bigger_than_the_host_budget_stops_as_before(caplog):
    from gpu_orchestrator.serve.autoscaling import encode

    w, a, calls, _ = warm_world(budget_gb=10.0)
    caplog.set_level("INFO", logger="gpu_orchestrator.arbiter")

    async def scenario():
        await a_ran_then_b_queued(w, a)
        w.clock.advance(1.0)
        await a.tick()
        await a.tick()
        await settle()
        assert a.snapshot.targets["echo-a"] == 0 and a.snapshot.parked == [] and calls == []
        assert encode(a.snapshot, True)["target:echo-a"] == 0.0
        said = [r.getMessage() for r in caplog.records if "instead of parking" in r.getMessage()]
        assert said == ["arbiter: echo-a stops instead of parking: its node has no room in the warm tier's "
                        "host-memory budget"]  # once, with the reason

    run(scenario())


def test_the_arbiter_packs_by_the_measured_peak_once_a_replica_has_run_a_job():
    w = World()
    a, _, _ = w.router("router-a")
    w.submit("echo-a")
    run(a.tick())
    w.cluster.running("echo-a")
    peak = {"deployment": "echo-a", "replica_id": "r1", "node_id": "node-1", "state": "resident", "vram_peak_gb": 9.0}
    w.beats.beats = [dict(peak, jobs_done=0)]  # loaded, no job yet: the working memory is not known
    run(a.tick())
    m = a.snapshot.models["echo-a"]
    assert (m["vram_packed_gb"], m["vram_source"], m["vram_measured_gb"]) == (16, "declared", None)
    w.beats.beats = [dict(peak, jobs_done=1)]
    run(a.tick())
    m = a.snapshot.models["echo-a"]
    assert (m["vram_declared_gb"], m["vram_measured_gb"], m["vram_packed_gb"], m["vram_source"]) == (16, 9.0, 10.35, "measured")
    assert "vram_declared_below_measured" not in m
    assert run(w.board.loads())["echo-a@vram"] == 9.0  # kept on the board for the next leader
    # Now echo-c (12 GB) fits beside it on the 24 GB GPU: 10.35 + 12 <= 24 (16 + 12 would not).
    w.submit("echo-c")
    run(a.tick())
    assert a.snapshot.targets == {"echo-a": 1, "echo-b": 0, "echo-c": 1, "echo-huge": 0}
    # A peak above the declared figure is flagged, and packed by.
    w.beats.beats = [dict(peak, jobs_done=2, vram_peak_gb=20.0)]
    run(a.tick())
    m = a.snapshot.models["echo-a"]
    assert m["vram_declared_below_measured"] is True and m["vram_packed_gb"] == 23.0


def test_a_new_leader_starts_from_the_learned_figures_on_the_board():
    w = World()
    run(w.board.remember_load("echo-a", 7.0))
    run(w.board.remember_load("echo-a@warm", 0.4))
    run(w.board.remember_load("echo-a@vram", 9.0))
    a, _, _ = w.router("router-a")
    run(a.tick())
    tr = a.book.tracks["echo-a"]
    assert (tr.measured_load_s, tr.measured_warm_s, tr.measured_vram_gb) == (7.0, 0.4, 9.0)


def test_learned_load_times_move_half_way_per_sample():
    from gpu_orchestrator.service.arbiter.tracks import learn

    assert learn(None, 8.0) == 8.0 and learn(8.0, 4.0) == 6.0 and learn(6.0, 30.0) == 18.0


class UnparkableBackend(ParkingBackend):
    async def park(self) -> dict:
        self.calls.append(("park", self.name))
        return {"parked": False, "unsupported": True, "why": "cannot park", "state": "resident",
                "replica_id": f"{self.name}-r1", "at": self.clock.now}


def test_a_model_that_cannot_park_stops_and_one_left_cold_takes_its_next_job():
    from gpu_orchestrator.serve.autoscaling import encode

    w, a, calls, _ = warm_world(budget_gb=40.0)
    a.warm.backends = {**a.warm.backends, "echo-a": UnparkableBackend("echo-a", calls, 16.0, w.clock)}

    async def scenario():
        await a_ran_then_b_queued(w, a)
        for _ in range(3):
            w.clock.advance(0.5)
            await a.tick()
            await settle()
        # Its replica answered that it cannot park: it is no longer kept, and Serve stops it.
        assert calls == [("park", "echo-a")] and a.snapshot.parked == []
        assert encode(a.snapshot, True)["target:echo-a"] == 0.0
        # echo-b: a wake that failed left its replica up with no model (cold). Its next load is
        # dispatchable at once (the job loads it in place), and counts as cold, not warm.
        w.cluster.running("echo-a", 0)
        w.cluster.running("echo-b")
        w.beats.beats = [beat(w, "echo-b", "cold")]
        finish_jobs(w, "echo-b")
        w.clock.advance(1.0)
        await a.tick()
        w.submit("echo-b")
        w.clock.advance(1.0)
        await a.tick()
        assert a.snapshot.targets["echo-b"] == 1 and a.dispatchable("echo-b")
        assert a.book.tracks["echo-b"].load_warm is False

    run(scenario())


def test_the_keeper_reads_a_late_loading_beat_as_resident_and_lets_a_stopping_replica_go():
    from gpu_orchestrator.core.policy_types import Decision
    from gpu_orchestrator.service.arbiter.warm import WarmKeeper, replicas

    w = World(warm={"enabled": True, "host_budget_gb": 40})
    keeper = WarmKeeper(w.cfg, {}, lambda name, at: None, w.clock)
    beats = [beat(w, "echo-a", "loading")]  # sent before its load ended; Serve already runs it
    reps = keeper.observe(beats)
    assert reps["echo-a"].idle == 1 and reps["echo-a"].other == 0
    views = [ModelView("echo-a", 16, load_s=5.0)]
    d = Decision(targets={"echo-a": 0}, placements={}, draining=frozenset())
    keeper.after(views, d, reps, {"echo-a": {"RUNNING": 1}})
    assert keeper.kept == {"echo-a"}
    # Serve already stopping it (a target of 0 went out before): keeping it would start a fresh replica.
    keeper.kept = set()
    keeper.after(views, d, reps, {"echo-a": {"STOPPING": 1}})
    assert keeper.kept == set()
    # A failed replica is not parked.
    assert replicas([beat(w, "echo-a", "failed")], {})["echo-a"].other == 1
