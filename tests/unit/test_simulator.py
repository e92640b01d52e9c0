"""The trace simulator on small traces with known answers."""

import pytest

from gpu_orchestrator.core.policy import Gpu, PolicyConfig
from gpu_orchestrator.core.simulator import SimModel, TraceJob, lower_bound, percentile, simulate, simulate_fifo

M = [SimModel("A", 16, 8.0), SimModel("B", 14, 6.0), SimModel("C", 12, 5.0)]
G = [Gpu("gpu0", 24)]


def abaac():
    return [TraceJob(i * 0.01, m, 2.0) for i, m in enumerate("ABAAC")]


def test_abaac_batches_the_as_fifo_swaps_four_times():
    ours, fifo = simulate(abaac(), M, G), simulate_fifo(abaac(), M, G)
    assert (ours.loads, ours.swaps) == (3, 2)  # A, B, C: one load each
    assert (fifo.loads, fifo.swaps) == (4, 3)  # A, B, A, C
    assert [r.job.model for r in sorted(ours.records, key=lambda r: r.start)] == list("AAABC")
    assert ours.makespan == pytest.approx(29.0)  # 8 + 3x2 + 6 + 2 + 5 + 2
    assert ours.makespan == pytest.approx(lower_bound(abaac(), {m.name: m for m in M}))
    assert fifo.makespan == pytest.approx(37.0)


def test_single_model_known_waits():
    trace = [TraceJob(0.0, "A", 2.0), TraceJob(0.0, "A", 2.0), TraceJob(10.0, "A", 1.0)]
    r = simulate(trace, M, G)
    assert r.loads == 1 and r.makespan == pytest.approx(13.0)
    starts = sorted(x.start for x in r.records)
    assert starts == pytest.approx([8.0, 10.0, 12.0])
    assert r.waits() == pytest.approx([2.0, 8.0, 10.0])
    assert r.max_wait == pytest.approx(10.0) and r.gpu_busy == pytest.approx(5.0 / 13.0)


def test_idle_model_scales_to_zero_in_simulation():
    trace = [TraceJob(0.0, "A", 1.0), TraceJob(100.0, "A", 1.0)]
    r = simulate(trace, M, G, PolicyConfig(idle_ttl_s=30))
    assert r.loads == 2 and r.swaps == 0  # reloaded after the TTL released it; not a swap


def test_vram_budget_holds_and_smalls_coreside():
    models = M + [SimModel("W", 4, 3.0)]
    trace = [TraceJob(i * 0.5, "AW"[i % 2], 1.0) for i in range(20)]
    r = simulate(trace, models, G)
    assert max(r.max_coresident_vram.values()) <= 24 and r.loads == 2


def test_starvation_bound_on_a_hot_stream():
    hot = [TraceJob(i * 2.0, "A", 2.0) for i in range(100)]  # A keeps the GPU fully busy
    rare = [TraceJob(5.0, "B", 1.0)]
    r = simulate(hot + rare, M, G, PolicyConfig(max_wait_s=30, min_resident_s=10))
    b = next(x for x in r.records if x.job.model == "B")
    assert b.wait <= 30 + 2.0  # due-based switch: waits about max_wait_s, not until A's stream ends


def test_percentile():
    assert percentile([1, 2, 3, 4], 50) == 2 and percentile(list(range(1, 101)), 99) == 99


# -- overload: the swap budget ----------------------------------------------------------------------

REAL = [SimModel("sdxl", 10, 12.0), SimModel("zimage", 20, 25.0), SimModel("whisper", 4, 5.0)]


def backlog_and_chatter(n_backlog=150, n_chatter=100, span=1200.0):
    """sdxl's backlog at t=0, zimage (cannot sit beside it) asking every 12 s."""
    return ([TraceJob(i * 0.001, "sdxl", 8.0) for i in range(n_backlog)]
            + [TraceJob(5.0 + i * span / n_chatter, "zimage", 1.5) for i in range(n_chatter)])


def test_backlog_plus_chatter_swaps_within_the_budget_and_is_not_dominated_by_fifo():
    trace = backlog_and_chatter()
    cfg = PolicyConfig(max_wait_s=60, min_resident_s=30, swap_budget=0.08, swap_window_s=150)
    ours, fifo = simulate(trace, REAL, G, cfg), simulate_fifo(trace, REAL, G)
    unbudgeted = simulate(trace, REAL, G, PolicyConfig(max_wait_s=60, min_resident_s=30, swap_budget=None))
    # Swap-ins: every load after the first two. They take at most the share of the time plus the
    # window's allowance (one swap of either kind past it).
    swap_in_s = ours.load_s - 12.0 - 25.0
    assert swap_in_s <= 0.08 * ours.makespan + 0.08 * 150 + 25.0
    assert ours.loads < unbudgeted.loads
    # Chatter is served during the backlog (rationed, not starved), and sooner than FIFO serves it.
    p99 = ours.p99_by_model()
    assert p99["zimage"] < fifo.p99_by_model()["zimage"]
    first_chatter = min(r.start for r in ours.records if r.job.model == "zimage")
    assert first_chatter < max(r.start for r in ours.records if r.job.model == "sdxl")
    assert ours.makespan <= 1.10 * lower_bound(trace, {m.name: m for m in REAL})


def test_high_priority_keeps_the_bound_under_overload():
    backlog = [TraceJob(i * 0.001, "zimage", 8.0) for i in range(80)]
    urgent = [TraceJob(10.0 + 25.0 * i, "sdxl", 2.0, priority=10) for i in range(12)]
    r = simulate(backlog + urgent, REAL, G, PolicyConfig(max_wait_s=60, min_resident_s=30))
    assert r.p99_wait(10) <= 60.0
    assert r.loads < 2 + 2 * len(urgent)  # urgent jobs share swaps once the budget is spent


def test_load_seconds_and_per_model_waits():
    r = simulate(abaac(), M, G)
    assert r.load_s == pytest.approx(8.0 + 6.0 + 5.0)
    assert r.load_share == pytest.approx(19.0 / (19.0 + 10.0))
    assert set(r.p99_by_model()) == {"A", "B", "C"}
