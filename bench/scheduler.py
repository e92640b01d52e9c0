"""Scheduling policy benchmark on job traces: the arbiter vs FIFO-with-swap-on-demand vs a lower bound.

    python bench/scheduler.py [--max-wait 60] [--min-resident 30] [--swap-budget 0.08|off] [--seed 7]

Pure simulation (gpu_orchestrator/core/simulator.py drives the same core.policy.decide the router
uses), so it is deterministic and takes seconds. One 24 GB GPU and two model sets:

- synthetic: three large models that never fit together (16/14/12 GB, loads 8/6/5 s) and a small
  one (4 GB) that fits beside any of them;
- real sizes: sdxl 10 GB / 12 s load, zimage 20 GB / 25 s, whisper 4 GB / 5 s, llm 18 GB / 30 s
  (whisper fits beside any one other; no two of the rest fit together).

Per trace: makespan against the lower bound (sum of service + one load per model used; never less
than last arrival + its service), waits, loads and loading's share of GPU time, each app's p99
wait for both policies, and PASS/MISS per target. A trace is *overloaded* when its work plus one
load per model takes longer than its arrivals span plus max_wait_s: no policy can then start every
job within the bound, and the swap budget is what keeps loads from eating the GPU.

`--swap-budget off` runs the arbiter without the budget (the policy before it existed).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_orchestrator.core.policy import decide  # noqa: E402
from gpu_orchestrator.core.policy_types import Gpu, ModelView, PolicyConfig  # noqa: E402
from gpu_orchestrator.core.simulator import (SimModel, SimResult, TraceJob, lower_bound, simulate,  # noqa: E402
                                             simulate_fifo)

SYNTH = [SimModel("sdxl", 16, 8.0), SimModel("llm", 14, 6.0), SimModel("zimage", 12, 5.0), SimModel("whisper", 4, 3.0)]
REAL = [SimModel("sdxl", 10, 12.0), SimModel("zimage", 20, 25.0), SimModel("whisper", 4, 5.0), SimModel("llm", 18, 30.0)]
SERVICE = {"sdxl": 2.0, "llm": 1.5, "zimage": 1.0, "whisper": 0.8}
GPUS = [Gpu("gpu0", 24)]
HIGH = 10  # the priority the traces' urgent jobs carry

LOAD_SHARE_TARGET = 0.15
MAKESPAN_TARGET = {"backlog": 1.10, "batchy": 1.20, "interleaved": 1.20, "mixed": 1.20, "priority": 1.25}
HIGH_VS_FIFO_TARGET = 0.2  # high-priority p99 wait at most this share of FIFO's


def svc(rng: random.Random, model: str) -> float:
    return round(SERVICE[model] * rng.uniform(0.7, 1.3), 3)


# -- synthetic model set ---------------------------------------------------------------------------

def bursty(rng: random.Random) -> list[TraceJob]:
    """Each burst is 30 jobs of one model within 15 s; bursts 80 s apart."""
    out = []
    for b, model in enumerate(["sdxl", "llm", "zimage", "sdxl", "llm", "zimage"]):
        for _ in range(30):
            out.append(TraceJob(b * 80 + rng.uniform(0, 15), model, svc(rng, model)))
    return out


def batch_at_once(rng: random.Random) -> list[TraceJob]:
    """300 jobs of four models, all queued at t=0 in random order (a backlog)."""
    models = [m.name for m in SYNTH]
    return [TraceJob(i * 0.001, m, svc(rng, m)) for i, m in enumerate(rng.choice(models) for _ in range(300))]


def interleaved(rng: random.Random) -> list[TraceJob]:
    """Round-robin across the three large models, one job every 1.2 s (the GPU is oversubscribed)."""
    cycle = ["sdxl", "llm", "zimage"]
    return [TraceJob(i * 1.2, cycle[i % 3], svc(rng, cycle[i % 3])) for i in range(240)]


def one_hot(rng: random.Random) -> list[TraceJob]:
    """One hot model (Poisson, ~60% utilisation) plus rare jobs for the others."""
    out, t = [], 0.0
    while t < 900:
        t += rng.expovariate(0.3)
        out.append(TraceJob(t, "sdxl", svc(rng, "sdxl")))
    for m, every in (("llm", 120.0), ("zimage", 150.0), ("whisper", 45.0)):
        t = rng.uniform(0, every)
        while t < 900:
            out.append(TraceJob(t, m, svc(rng, m)))
            t += every * rng.uniform(0.7, 1.3)
    return out


def priority_mix(rng: random.Random) -> list[TraceJob]:
    """Random models, ~55% utilisation before swaps; 10% of jobs carry high priority."""
    out, t = [], 0.0
    names = ["sdxl", "llm", "zimage", "whisper"]
    while t < 900:
        t += rng.expovariate(0.4)
        m = rng.choice(names)
        out.append(TraceJob(t, m, svc(rng, m), priority=HIGH if rng.random() < 0.1 else 0))
    return out


# -- real model sizes ------------------------------------------------------------------------------

def backlog_chatter(rng: random.Random) -> list[TraceJob]:
    """150 sdxl jobs (8 s) queued at t=0, plus 120 short zimage jobs (1-2 s) spread over 20 min:
    a model that cannot sit beside the backlog's keeps asking for the GPU."""
    out = [TraceJob(i * 0.001, "sdxl", round(8 * rng.uniform(0.9, 1.1), 3)) for i in range(150)]
    out += [TraceJob(rng.uniform(0, 1200), "zimage", round(rng.uniform(1.0, 2.0), 3)) for _ in range(120)]
    return out


def backlog_urgent(rng: random.Random) -> list[TraceJob]:
    """200 zimage jobs (8 s) queued at t=0, plus 30 high-priority jobs for whisper (fits beside
    zimage) and sdxl (does not) spread over 6 min."""
    out = [TraceJob(i * 0.001, "zimage", round(8 * rng.uniform(0.9, 1.1), 3)) for i in range(200)]
    for k in range(30):
        m = "whisper" if k % 2 else "sdxl"
        out.append(TraceJob(rng.uniform(0, 360), m, round(rng.uniform(1.0, 3.0), 3), priority=HIGH))
    return out


def bursty_real(rng: random.Random) -> list[TraceJob]:
    """Bursts of 15 jobs of one model within 20 s, a burst every 90 s, the four models in turn."""
    work = {"sdxl": 4.0, "zimage": 3.0, "whisper": 1.5, "llm": 3.0}
    out = []
    for b in range(16):
        m = ["sdxl", "whisper", "zimage", "llm"][b % 4]
        out += [TraceJob(b * 90 + rng.uniform(0, 20), m, round(work[m] * rng.uniform(0.7, 1.3), 3)) for _ in range(15)]
    return out


def office_day(rng: random.Random) -> list[TraceJob]:
    """Four models, bursty: 400 jobs over 27 min in bursts of 3-25 jobs of one model, bursts about a
    minute apart and overlapping; busy enough that some bursts queue behind others."""
    work = {"sdxl": 5.0, "zimage": 3.5, "whisper": 2.0, "llm": 4.0}
    out, t = [], 0.0
    while len(out) < 400:
        m = rng.choice(list(work))
        for _ in range(min(400 - len(out), rng.randint(3, 25))):
            out.append(TraceJob(t + rng.uniform(0, 40), m, round(work[m] * rng.uniform(0.7, 1.3), 3)))
        t += rng.expovariate(1 / 60)
    span = max(j.arrival for j in out)
    return [TraceJob(round(j.arrival * 1620 / span, 3), j.model, j.service_s) for j in out]


def round_robin(rng: random.Random) -> list[TraceJob]:
    """Four models strictly round-robin, a 2 s job every 0.5 s (4x what the GPU can serve)."""
    names = ["sdxl", "zimage", "whisper", "llm"]
    return [TraceJob(i * 0.5, names[i % 4], 2.0) for i in range(480)]


@dataclass(frozen=True)
class Trace:
    gen: Callable[[random.Random], list[TraceJob]]
    kind: str  # batchy | backlog | interleaved | mixed | priority: which makespan target applies
    models: list[SimModel]


TRACES = {
    "bursty": Trace(bursty, "batchy", SYNTH),
    "backlog": Trace(batch_at_once, "backlog", SYNTH),
    "interleaved": Trace(interleaved, "interleaved", SYNTH),
    "one-hot+rare": Trace(one_hot, "mixed", SYNTH),
    "priority-mix": Trace(priority_mix, "mixed", SYNTH),
    "backlog+chatter": Trace(backlog_chatter, "backlog", REAL),
    "bursty-real": Trace(bursty_real, "batchy", REAL),
    "backlog+urgent": Trace(backlog_urgent, "priority", REAL),
    "office-day": Trace(office_day, "mixed", REAL),
    "round-robin-4": Trace(round_robin, "interleaved", REAL),
}


def overloaded(trace: list[TraceJob], models: dict[str, SimModel], max_wait_s: float) -> bool:
    """Sustained overload: the trace's work plus one load per model takes longer than its arrivals
    span plus max_wait_s, so the queue only grows and no policy keeps the wait bound."""
    work = sum(j.service_s for j in trace) + sum(models[m].load_s for m in {j.model for j in trace})
    span = max(j.arrival for j in trace) - min(j.arrival for j in trace)
    return work > span + max_wait_s


def bursts_beyond_bound(trace: list[TraceJob], models: dict[str, SimModel], max_wait_s: float) -> bool:
    """Whether some stretch of arrivals brings more work (service plus one load per model among
    them) than the stretch lasts plus max_wait_s: then no policy starts all of it within the bound."""
    jobs = sorted(trace, key=lambda j: j.arrival)
    for i, first in enumerate(jobs):
        work, used = 0.0, set()
        for j in jobs[i:]:
            work += j.service_s + (models[j.model].load_s if j.model not in used else 0.0)
            used.add(j.model)
            if work > j.arrival - first.arrival + max_wait_s:
                return True
    return False


def dominates(a: SimResult, b: SimResult) -> bool:
    """`a` is no worse than `b` on makespan and on every app's p99 wait, and better on one."""
    pa, pb = a.p99_by_model(), b.p99_by_model()
    fa, fb = [a.makespan, *pa.values()], [b.makespan, *(pb[m] for m in pa)]
    eps = 1e-6
    return all(x <= y + eps for x, y in zip(fa, fb)) and any(x < y - eps for x, y in zip(fa, fb))


def p99s(r: SimResult) -> str:
    return " ".join(f"{m} {v:.0f}" for m, v in r.p99_by_model().items())


# -- scale: one decide() and one arbiter tick on large random clusters --------------------------------

DECIDE_TARGET_MS = 20.0  # at 256 GPUs and 1,000 models
TICK_TARGET_MS = 50.0
SIZES = [(8, 20), (64, 200), (256, 1000)]


def random_cluster(rng: random.Random, n_gpus: int, n_models: int) -> tuple[list[ModelView], list[Gpu]]:
    """A consistent random cluster: GPUs of 24/48/80 GB (some of a node type); half the models
    resident (where they fit), busy or idle, a third cold with queued work, the rest cold and idle."""
    gpus = [Gpu(f"g{i}", rng.choice([24.0, 48.0, 80.0]), rng.choice(["", "l4", "h100"])) for i in range(n_gpus)]
    free = {g.id: g.vram_gb for g in gpus}
    views = []
    for k in range(n_models):
        vram, load, svc = rng.choice([2, 4, 8, 10, 16, 22, 40]), rng.uniform(3, 30), rng.uniform(0.5, 8)
        roll = rng.random()
        fits = [g for g in gpus if free[g.id] >= vram]
        if roll < 0.5 and fits:
            g = rng.choice(fits)
            free[g.id] -= vram
            busy = rng.random() < 0.6
            views.append(ModelView(f"m{k}", vram, load_s=load, service_s=svc, replicas=1, placement=(g.id,),
                                   in_flight=int(busy), queued=rng.randint(0, 20) if busy else 0,
                                   oldest_wait_s=rng.uniform(0, 120) if busy else 0.0,
                                   idle_s=None if busy else rng.uniform(0, 600), resident_s=rng.uniform(0, 600)))
        elif roll < 0.8:
            views.append(ModelView(f"m{k}", vram, load_s=load, service_s=svc, queued=rng.randint(1, 30),
                                   oldest_wait_s=rng.uniform(0, 200), max_priority=rng.choice([0, 0, HIGH]),
                                   cold_s=rng.choice([None, rng.uniform(0, 300)]),
                                   pin=rng.choice([None, None, None, "l4"])))
        else:
            views.append(ModelView(f"m{k}", vram, load_s=load))
    return views, gpus


def best_ms(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def tick_ms(n_gpus: int, n_models: int, seed: int) -> float:
    """The arbiter loop's whole leader tick (queue stats from the in-memory store, replica states
    and nodes from a fake cluster, heartbeats, views, decide, publish) at this size."""
    import asyncio

    from gpu_orchestrator.bus.decisions import MemoryDecisionBoard
    from gpu_orchestrator.core.config import parse_config
    from gpu_orchestrator.service.arbiter.loop import LEADER_LOCK_KEY, ArbiterLoop
    from gpu_orchestrator.service.arbiter.ports import Node
    from gpu_orchestrator.store.memory import MemoryJobStore

    rng = random.Random(seed)
    names = [f"m{k}" for k in range(n_models)]
    cfg = parse_config({
        "arbiter": {"enabled": True},
        "models": {n: {"impl": "deployments.echo:Echo", "vram_gb": rng.choice([2, 4, 8, 10, 16, 22, 40]),
                       "load_s": 10.0} for n in names},
        "apps": [{"id": n, "deployment": n} for n in names],
    })
    store = MemoryJobStore()
    for n in rng.sample(names, n_models // 3):
        for _ in range(rng.randint(1, 5)):
            store.submit(app_id=n, params={})
    nodes = [Node(f"node{i:04d}", {"GPU": 1.0, "vram_gb": rng.choice([24.0, 48.0, 80.0])}) for i in range(n_gpus)]
    resident = rng.sample(names, n_models // 4)

    class Cluster:
        def replica_states(self):
            return {n: {"RUNNING": 1} for n in resident}

        def nodes(self):
            return nodes

    class Beats:
        async def read_all(self):
            return [{"deployment": n, "node_id": nodes[i % n_gpus].node_id, "last_used": 0.0} for i, n in enumerate(resident)]

    loop = ArbiterLoop(cfg=cfg, store=store, lock=store.leader_lock(LEADER_LOCK_KEY), board=MemoryDecisionBoard(),
                       cluster=Cluster(), heartbeats=Beats(), owner="bench")

    async def ticks() -> float:
        await loop.tick()  # the first reads the nodes and service times (then every 30 s / 10 s)
        return min([await _timed(loop.tick) for _ in range(5)])

    async def _timed(fn) -> float:
        t0 = time.perf_counter()
        await fn()
        return (time.perf_counter() - t0) * 1000

    return asyncio.run(ticks())


def scale(seed: int) -> list[tuple[str, str, bool]]:
    print("\nscale: one decide() on random consistent clusters (best of several), and the arbiter's whole tick")
    verdicts = []
    times = []
    for n_gpus, n_models in SIZES:
        views, gpus = random_cluster(random.Random(seed), n_gpus, n_models)
        credit = {g.id: 6.0 for g in gpus}
        ms = best_ms(lambda: decide(views, gpus, PolicyConfig(), credit), 20 if n_gpus < 100 else 7)
        times.append(ms)
        print(f"  decide  {n_gpus:>4} GPUs {n_models:>5} models  {ms:8.2f} ms")
    n_gpus, n_models = SIZES[-1]
    growth = times[-1] / times[-2]
    verdicts.append(("scale", f"decide at {n_gpus} GPUs / {n_models} models {times[-1]:.1f} ms (target <= "
                              f"{DECIDE_TARGET_MS:g} ms); x{growth:.1f} from {SIZES[-2][0]}/{SIZES[-2][1]} "
                              f"(x{n_models / SIZES[-2][1]:g} the models)", times[-1] <= DECIDE_TARGET_MS))
    tick = tick_ms(n_gpus, n_models, seed)
    print(f"  tick    {n_gpus:>4} GPUs {n_models:>5} models  {tick:8.2f} ms (views, decide, publish; in-memory store)")
    verdicts.append(("scale", f"arbiter tick at {n_gpus} GPUs / {n_models} models {tick:.1f} ms (target <= "
                              f"{TICK_TARGET_MS:g} ms)", tick <= TICK_TARGET_MS))
    return verdicts


# -- warm tier: weights kept in host memory after eviction (core.warm) ------------------------------

WARM_FACTOR = 0.1  # ASSUMED warm_load_s = 0.1 x load_s until bench/warm.py measures it
HOST_BUDGET_GB = 64.0


def warm_tier(cfg: PolicyConfig, seed: int) -> None:
    """Each trace, cold-only (today's figures) vs with a warm tier, for the arbiter and FIFO."""
    print(f"\nwarm tier: evicted models keep their weights in host memory (budget {HOST_BUDGET_GB:g} GB per node; "
          f"dropped least recently used first,\nties by the smaller reload saving: core.warm); a warm load takes "
          f"warm_load_s = {WARM_FACTOR:g} x load_s (an ASSUMPTION: bench/warm.py\nmeasures 0.05x for a parked "
          f"replica on CPU; a GPU's figure awaits bench/gpu/swap.py).\nLoads' share of GPU time and p99 wait (s), "
          f"cold-only -> warm:")
    print(f"  {'trace':<16}{'models':<7}{'policy':<8}{'load% cold':>11}{'warm':>6}{'p99 cold':>10}{'warm':>8}"
          f"{'loads':>7}{'warm':>6}")
    sets = sorted(TRACES.items(), key=lambda kv: kv[1].models is not REAL)
    for name, tr in sets:
        trace = tr.gen(random.Random(seed))
        warm_models = [replace(m, warm_load_s=round(WARM_FACTOR * m.load_s, 3)) for m in tr.models]
        label = "real" if tr.models is REAL else "synth"
        runs = (("arbiter", simulate(trace, tr.models, GPUS, cfg),
                 simulate(trace, warm_models, GPUS, cfg, host_budget_gb=HOST_BUDGET_GB)),
                ("fifo", simulate_fifo(trace, tr.models, GPUS),
                 simulate_fifo(trace, warm_models, GPUS, host_budget_gb=HOST_BUDGET_GB)))
        for policy, cold, warm in runs:
            print(f"  {name:<16}{label:<7}{policy:<8}{cold.load_share:>11.1%}{warm.load_share:>6.1%}"
                  f"{cold.p99_wait():>10.1f}{warm.p99_wait():>8.1f}{cold.loads:>4}->{warm.loads:<3}{warm.warm_loads:>5}")
    print("  (loads: cold-only -> with the warm tier; warm: how many of those came from host memory)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-wait", type=float, default=60.0, help="arbiter max_wait_s")
    ap.add_argument("--min-resident", type=float, default=30.0, help="arbiter min_resident_s")
    ap.add_argument("--swap-budget", default=str(PolicyConfig.swap_budget),
                    help="share of GPU time loads may take under overload, or 'off'")
    ap.add_argument("--swap-window", type=float, default=PolicyConfig.swap_window_s, help="arbiter swap_window_s")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    budget = None if args.swap_budget == "off" else float(args.swap_budget)
    cfg = PolicyConfig(idle_ttl_s=300.0, max_wait_s=args.max_wait, min_resident_s=args.min_resident,
                       swap_budget=budget, swap_window_s=args.swap_window)
    print(f"one {GPUS[0].vram_gb:g} GB GPU; arbiter max_wait_s={cfg.max_wait_s:g}, min_resident_s={cfg.min_resident_s:g}, "
          f"idle_ttl_s={cfg.idle_ttl_s:g}, swap_budget={'off' if budget is None else f'{budget:g}'}, "
          f"swap_window_s={cfg.swap_window_s:g}; seed {args.seed}\n")
    hdr = (f"{'trace':<16}{'kind':<12}{'jobs':>5} {'policy':<8}{'makespan':>9}{'/LB':>7}{'/FIFO':>7}"
           f"{'mean wait':>10}{'p99 wait':>9}{'loads':>6}{'load%':>6}  p99 wait per app (s)")
    print(hdr)
    print("-" * (len(hdr) + 30))
    verdicts: list[tuple[str, str, bool]] = []
    dispatch: list[tuple[str, SimResult, SimResult]] = []
    for name, tr in TRACES.items():
        trace = tr.gen(random.Random(args.seed))
        models = {m.name: m for m in tr.models}
        lb = lower_bound(trace, models, len(GPUS))
        over = overloaded(trace, models, cfg.max_wait_s)
        bursts = not over and bursts_beyond_bound(trace, models, cfg.max_wait_s)
        ours = simulate(trace, tr.models, GPUS, cfg)
        turns = simulate(trace, tr.models, GPUS, cfg, turns=True)
        fifo = simulate_fifo(trace, tr.models, GPUS)
        kind = tr.kind + ("*" if over else "~" if bursts else "")
        for label, r in (("arbiter", ours), ("turns", turns), ("fifo", fifo)):
            print(f"{name:<16}{kind:<12}{len(trace):>5} {label:<8}{r.makespan:>9.1f}{r.makespan / lb:>7.2f}"
                  f"{r.makespan / fifo.makespan:>7.2f}{r.mean_wait:>10.1f}{r.p99_wait():>9.1f}{r.loads:>6}"
                  f"{r.load_share:>6.0%}  {p99s(r)}")
        print(f"{'':<16}{'':<12}{'':>5} {'bound':<8}{lb:>9.1f}")
        dispatch.append((name, ours, turns))

        target = MAKESPAN_TARGET[tr.kind]
        verdicts.append((name, f"makespan {ours.makespan / lb:.2f}x lower bound (target <= {target:.2f})",
                         ours.makespan / lb <= target))
        verdicts.append((name, "not dominated by FIFO (makespan and every app's p99 wait)", not dominates(fifo, ours)))
        if over:
            verdicts.append((name, f"overloaded: loads {ours.load_share:.1%} of GPU time (target <= {LOAD_SHARE_TARGET:.0%})",
                             ours.load_share <= LOAD_SHARE_TARGET))
        elif bursts:
            verdicts.append((name, f"bursts beyond the bound: loads {ours.load_share:.1%} of GPU time (target <= FIFO's "
                                   f"{fifo.load_share:.1%})", ours.load_share <= fifo.load_share))
        else:
            p99 = ours.p99_wait()
            verdicts.append((name, f"p99 wait {p99:.1f} s (target <= max_wait_s {cfg.max_wait_s:g} s)", p99 <= cfg.max_wait_s))
        if tr.kind == "interleaved" and tr.models is SYNTH:
            gain = 1 - ours.makespan / fifo.makespan
            verdicts.append((name, f"makespan {gain:.0%} lower than FIFO (target >= 30%)", gain >= 0.30))
        if ours.waits(HIGH):
            hp, fhp = ours.p99_wait(HIGH), fifo.p99_wait(HIGH)
            verdicts.append((name, f"high-priority p99 wait {hp:.1f} s = {hp / fhp:.2f}x FIFO's {fhp:.0f} s "
                                   f"(target <= {HIGH_VS_FIFO_TARGET:g}x)", hp <= HIGH_VS_FIFO_TARGET * fhp))
        # Starving: past the bound the model goes first, then waits at most for a load in progress,
        # the victim's min_resident_s and its running job (see core.policy.starving).
        slack = cfg.min_resident_s + max(m.load_s for m in tr.models) + 2 * max(j.service_s for j in trace)
        cold_name, cold = max(ours.max_cold_with_work.items(), key=lambda kv: kv[1])
        verdicts.append((name, f"longest cold with work {cold:.0f} s ({cold_name}; target <= starvation bound "
                               f"{cfg.starvation_bound_s:g} s + {slack:.0f} s)", cold <= cfg.starvation_bound_s + slack))
        peak = max(ours.max_coresident_vram.values())
        assert peak <= GPUS[0].vram_gb, f"arbiter over budget: {peak} GB"
    verdicts += scale(args.seed)
    print("\n* overloaded: the work, one load per model included, takes longer than the arrivals span + max_wait_s\n"
          "~ bursts beyond the bound: some stretch of arrivals brings more work than it lasts + max_wait_s")
    print("targets:")
    for name, text, ok in verdicts:
        print(f"  {'PASS' if ok else 'MISS'}  {name:<16} {text}")
    print(f"  (peak co-resident VRAM never above {GPUS[0].vram_gb:g} GB: checked on every trace)")
    misses = sum(1 for *_, ok in verdicts if not ok)
    print(f"{len(verdicts) - misses} PASS, {misses} MISS")
    print("\ndispatch with two models resident on one GPU: side by side (the arbiter row; the live dispatcher) vs\n"
          "taking turns (the turns row: core.gpu_share.may_start), mean / p99 wait (s):")
    for name, a, b in dispatch:
        print(f"  {name:<16} side by side {a.mean_wait:7.1f} / {a.p99_wait():7.1f}   "
              f"turns {b.mean_wait:7.1f} / {b.p99_wait():7.1f}")
    print("notes: the GPU time-slices what runs on it (core.gpu_share: k tasks with no overlap each progress at\n"
          "1/k; a load is a task too); the lower bound serialises all work and counts one load per model.")
    warm_tier(cfg, args.seed)


if __name__ == "__main__":
    main()
