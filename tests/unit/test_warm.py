"""The warm tier (core.warm): host-memory budget, the drop rule, load_cost, and its use in the policy
and the simulator."""

from __future__ import annotations

import os
import random
from dataclasses import replace

from gpu_orchestrator.core.policy import decide, reload_cost
from gpu_orchestrator.core.policy_types import Gpu, ModelView, PolicyConfig
from gpu_orchestrator.core.simulator import SimModel, TraceJob, simulate, simulate_fifo
from gpu_orchestrator.core.warm import WarmCopy, WarmTier, drop_order, load_cost, victims


def test_load_cost_is_warm_only_when_warm_and_known():
    assert load_cost(ModelView("a", 4, load_s=10)) == 10
    assert load_cost(ModelView("a", 4, load_s=10, warm=True)) == 10  # no warm time known
    assert load_cost(ModelView("a", 4, load_s=10, warm_load_s=1.0)) == 10  # not warm now
    assert load_cost(ModelView("a", 4, load_s=10, warm_load_s=1.0, warm=True)) == 1.0
    assert reload_cost(ModelView("a", 4, load_s=10, warm_load_s=1.0, warm=True, queued=2)) == 1.0
    assert reload_cost(ModelView("a", 4, load_s=10, warm_load_s=1.0, warm=True)) == 0.0


def test_budget_never_exceeded_random():
    rng = random.Random(3)
    for _ in range(50):
        tier = WarmTier(rng.choice([8.0, 24.0, 64.0]))
        for t in range(200):
            name = f"m{rng.randrange(12)}"
            if rng.random() < 0.3:
                tier.take(name)
            else:
                tier.keep(name, rng.choice([2.0, 4.0, 10.0, 20.0, 30.0, 80.0]), rng.uniform(0, 20), float(t))
            assert tier.used_gb <= tier.budget_gb + 1e-9


def test_bigger_than_budget_never_warm():
    tier = WarmTier(16.0)
    tier.keep("small", 4, 5.0, 0.0)
    assert tier.keep("huge", 20, 100.0, 1.0) == ["huge"]
    assert not tier.is_warm("huge") and tier.is_warm("small")
    assert not tier.would_keep(20) and tier.would_keep(16)
    assert victims([], 16.0, 17.0) is None


def test_least_recently_used_goes_first():
    tier = WarmTier(20.0)
    tier.keep("old", 8, 50.0, 0.0)
    tier.keep("mid", 8, 1.0, 1.0)
    assert tier.keep("new", 8, 1.0, 2.0) == ["old"]  # the oldest goes, whatever it saves
    assert sorted(tier.held) == ["mid", "new"]
    assert tier.dropped == 1


def test_ties_by_smaller_saving_then_name():
    copies = [WarmCopy("b", 4, 9.0, 5.0), WarmCopy("a", 4, 9.0, 5.0), WarmCopy("c", 4, 2.0, 5.0), WarmCopy("d", 4, 0.0, 6.0)]
    assert [c.name for c in drop_order(copies)] == ["c", "a", "b", "d"]
    tier = WarmTier(12.0, {c.name: c for c in copies[:3]})
    assert tier.keep("e", 4, 1.0, 7.0) == ["c"]


def test_drops_only_as_many_as_needed():
    tier = WarmTier(24.0)
    for i, gb in enumerate([4, 4, 8, 8]):
        tier.keep(f"m{i}", gb, 1.0, float(i))
    assert tier.keep("x", 10, 1.0, 9.0) == ["m0", "m1", "m2"]
    assert tier.used_gb == 18


def test_take_consumes_the_copy():
    tier = WarmTier(24.0)
    tier.keep("a", 4, 1.0, 0.0)
    assert tier.take("a") and not tier.take("a") and tier.used_gb == 0


def test_policy_unchanged_when_cold_and_weighs_warm_loads():
    """A busy resident displaced only once due: a warm newcomer is due later (its load is shorter)."""
    gpus = [Gpu("g", 24)]
    busy = ModelView("busy", 20, load_s=5, service_s=1, replicas=1, placement=("g",), in_flight=1, queued=5,
                     resident_s=100)
    cold = ModelView("new", 20, load_s=30, service_s=1, queued=1, oldest_wait_s=35)
    cfg = PolicyConfig(swap_budget=None)
    assert any(a.for_model == "new" for a in decide([busy, cold], gpus, cfg).actions)
    warm = replace(cold, warm_load_s=3.0, warm=True)
    assert not any(a.for_model == "new" for a in decide([busy, warm], gpus, cfg).actions)
    assert decide([busy, replace(cold, warm_load_s=3.0)], gpus, cfg) == decide([busy, cold], gpus, cfg)


def _trace():
    rng = random.Random(5)
    return [TraceJob(i * 3.0, m, 1.0) for i, m in enumerate(rng.choice("abc") for _ in range(60))]


MODELS = [SimModel("a", 16, 10.0), SimModel("b", 16, 10.0), SimModel("c", 16, 10.0)]
WARM = [replace(m, warm_load_s=1.0) for m in MODELS]


def test_simulator_without_budget_is_cold():
    for sim in (simulate, simulate_fifo):
        a, b = sim(_trace(), MODELS, [Gpu("g", 24)]), sim(_trace(), WARM, [Gpu("g", 24)])
        assert a.warm_loads == b.warm_loads == 0 and a.load_s == b.load_s and a.waits() == b.waits()


def test_simulator_warm_tier_cuts_load_time():
    for sim in (simulate, simulate_fifo):
        cold = sim(_trace(), WARM, [Gpu("g", 24)])
        warm = sim(_trace(), WARM, [Gpu("g", 24)], host_budget_gb=64)
        assert warm.warm_loads > 0 and warm.load_share < cold.load_share
        # A budget smaller than any model: nothing is ever warm.
        none = sim(_trace(), WARM, [Gpu("g", 24)], host_budget_gb=8)
        assert none.warm_loads == 0 and none.load_s == cold.load_s


# -- the live tier's plan (core.warm.plan_parking) -------------------------------------------------

def test_plan_parks_what_fits_and_drops_the_least_recently_used_copy():
    from gpu_orchestrator.core.warm import HostMemory, plan_parking

    held = {"n1": [WarmCopy("old", 10, 5.0, 1.0), WarmCopy("newer", 10, 5.0, 5.0)]}
    leaving = {"n1": [WarmCopy("now", 10, 5.0, 9.0)]}
    park, drop = plan_parking(held, leaving, {"n1": HostMemory(24.0, free_gb=100.0)}, min_free_gb=2.0)
    assert park == {"now"} and drop == {"old"}  # 30 GB do not fit 24: the least recently used goes
    # Leaving on its idle TTL, last used before both held copies: it is the one that goes.
    park, drop = plan_parking(held, {"n1": [WarmCopy("idle", 10, 5.0, 0.5)]}, {"n1": HostMemory(24.0)}, 2.0)
    assert park == set() and drop == set()
    # Too big for the whole budget: it stops, the copies held stay.
    park, drop = plan_parking(held, {"n1": [WarmCopy("huge", 30, 5.0, 9.0)]}, {"n1": HostMemory(24.0)}, 2.0)
    assert park == set() and drop == set()
    # A node with no memory reported parks nothing new and keeps what it holds.
    assert plan_parking(held, leaving, {}, 2.0) == (set(), set())


def test_plan_drops_copies_when_free_ram_runs_low_and_never_exceeds_the_room():
    from gpu_orchestrator.core.warm import HostMemory, plan_parking, room

    held = {"n1": [WarmCopy("a", 6, 1.0, 1.0), WarmCopy("b", 6, 9.0, 1.0), WarmCopy("c", 6, 3.0, 3.0)]}
    host = HostMemory(budget_gb=100.0, free_gb=1.0)  # 1 GB free, 2 GB wanted free: 17 GB of room
    assert room(host, 18.0, 2.0) == 17.0
    park, drop = plan_parking(held, {}, {"n1": host}, min_free_gb=2.0)
    assert drop == {"a"} and park == set()  # tie on age: the smaller reload saving goes first
    rng = random.Random(5)
    for _ in range(200):
        copies = [WarmCopy(f"h{i}", rng.choice([1.0, 4.0, 8.0]), rng.uniform(0, 9), rng.uniform(0, 9)) for i in range(5)]
        going = [WarmCopy(f"l{i}", rng.choice([1.0, 4.0, 8.0, 40.0]), rng.uniform(0, 9), 10.0 + i) for i in range(3)]
        host = HostMemory(rng.choice([8.0, 16.0, 32.0]), rng.choice([None, 0.5, 6.0, 60.0]))
        park, drop = plan_parking({"n": copies}, {"n": going}, {"n": host}, 2.0)
        kept = sum(c.gb for c in copies if c.name not in drop) + sum(c.gb for c in going if c.name in park)
        assert kept <= max(room(host, sum(c.gb for c in copies), 2.0), 0) + 1e-9


def test_peak_vram_is_the_highest_sample_and_none_without_cuda(monkeypatch):
    from types import SimpleNamespace

    from gpu_orchestrator.models import vram

    reserved = iter([2 * vram.GB, 6 * vram.GB, 3 * vram.GB])
    cuda = SimpleNamespace(is_available=lambda: True, max_memory_reserved=lambda: next(reserved))
    monkeypatch.setattr(vram, "nvml_gb", lambda pid=None: None)  # no NVML here: torch's figure alone
    peak = vram.PeakVram()
    assert [peak.sample(SimpleNamespace(cuda=cuda)) for _ in range(3)] == [2.0, 6.0, 6.0]
    monkeypatch.setattr(vram, "nvml_gb", lambda pid=None: 7.5)  # a child process's engine counts too
    cuda.max_memory_reserved = lambda: 1 * vram.GB
    assert peak.sample(SimpleNamespace(cuda=cuda)) == 7.5
    assert vram.PeakVram().sample(None) is None
    assert vram._children(os.getpid()) >= {os.getpid()}


def test_host_memory_reads_this_machine():
    from gpu_orchestrator.models.host_memory import host_memory

    total, free = host_memory()
    assert 0 < free <= total


def test_the_warm_tier_refuses_vram_resource_and_warns_of_full_gpu_shares():
    import pytest

    from gpu_orchestrator.core.config import ConfigError, parse_config
    from gpu_orchestrator.service.arbiter.views import Pools, packing_warnings

    def cfg(share, **arbiter):
        return parse_config({"apps": [{"id": "a", "deployment": "a"}],
                             "models": {m: {"impl": "deployments.echo:Echo", "num_gpus": share, "vram_gb": 8}
                                        for m in ("a", "b", "c")},
                             "arbiter": {"enabled": True, "warm": {"enabled": True}, **arbiter}})

    with pytest.raises(ConfigError, match="warm.enabled: a parked replica keeps its vram_resource"):
        cfg(0.3, vram_resource="vram_gb")
    pools = Pools([Gpu("g0", 24)], {"n1": ("g0",)})
    (w,) = packing_warnings(cfg(0.5), pools)
    assert "shares sum to 1.5 on 1 GPU(s)" in w and "num_gpus <= 0.33" in w
    assert packing_warnings(cfg(0.3), pools) == []
