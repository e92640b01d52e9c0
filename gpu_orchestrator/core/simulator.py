"""Trace simulator for GPU scheduling policies. Pure and deterministic: event-driven, no clock.

Runs a job trace (arrival, model, service time, priority) on GPUs with per-model load costs, either
under the arbiter's policy (`simulate`, the same `core.policy.decide` the router uses) or under
FIFO-with-swap-on-demand (`simulate_fifo`: what the original system and Ollama do: run jobs in
arrival order, loading the next job's model, evicting least-recently-used ones to make room).

The GPU model (core.gpu_share), the same for both: a GPU time-slices what runs on it. Every job
and every model load is a task with a compute share (a job: 1 - its model's `overlap`, default 1;
a load: 1, copying weights in is not free), and while the shares on a GPU sum to S each task
progresses at 1/max(1, S) of its solo speed. Two models resident on one GPU serving at once each
take twice as long, and a load beside a running job slows both. A replica runs one job at a time.
FIFO runs one task per GPU at a time (a load, then its job), which under this model costs it
nothing: with no overlap, sharing never adds throughput.

The service times in a trace are solo-speed GPU seconds; `lower_bound` serialises them.

The warm tier (optional, `host_budget_gb`; core.warm): a model that leaves the GPU keeps its weights
in host memory while the budget allows (the simulated GPUs share one node, so one budget), and its
next load takes `warm_load_s` instead of `load_s`. Only models with a `warm_load_s` are kept warm.
The arbiter sees it in its views (warm, warm_load_s: core.warm.load_cost). None: no warm tier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gpu_orchestrator.core.gpu_share import SharedGpu, job_share, may_start
from gpu_orchestrator.core.policy import decide
from gpu_orchestrator.core.policy_types import Gpu, ModelView, PolicyConfig, Verb
from gpu_orchestrator.core.swap_budget import SwapBudget
from gpu_orchestrator.core.warm import WarmTier


@dataclass(frozen=True)
class SimModel:
    name: str
    vram_gb: float
    load_s: float
    pin: str | None = None
    overlap: float = 0.0  # models.<name>.overlap: how much its jobs share a GPU for free (core.gpu_share)
    warm_load_s: float | None = None  # its load time from host memory (the warm tier; core.warm)


@dataclass(frozen=True)
class TraceJob:
    arrival: float
    model: str
    service_s: float
    priority: int = 0


@dataclass
class JobRecord:
    job: TraceJob
    start: float = math.nan
    end: float = math.nan

    @property
    def wait(self) -> float:
        return self.start - self.job.arrival


@dataclass
class SimResult:
    records: list[JobRecord]
    loads: int
    swaps: int  # evictions made to fit another model (not idle-TTL releases)
    busy_s: float  # GPU time spent serving jobs
    n_gpus: int
    max_coresident_vram: dict[str, float] = field(default_factory=dict)
    load_s: float = 0.0  # GPU time spent loading models
    # Per model, the longest stretch it had queued work and no replica (not even loading).
    max_cold_with_work: dict[str, float] = field(default_factory=dict)
    warm_loads: int = 0  # loads from host memory (the warm tier)

    @property
    def load_share(self) -> float:
        """Loading's share of the time the GPUs worked (serving + loading)."""
        return self.load_s / (self.busy_s + self.load_s) if self.busy_s + self.load_s else 0.0

    def p99_by_model(self) -> dict[str, float]:
        models = sorted({r.job.model for r in self.records})
        return {m: percentile([r.wait for r in self.records if r.job.model == m], 99) for m in models}

    @property
    def makespan(self) -> float:
        return max(r.end for r in self.records) - min(r.job.arrival for r in self.records)

    def waits(self, priority: int | None = None) -> list[float]:
        return sorted(r.wait for r in self.records if priority is None or r.job.priority == priority)

    @property
    def mean_wait(self) -> float:
        w = self.waits()
        return sum(w) / len(w)

    def p99_wait(self, priority: int | None = None) -> float:
        return percentile(self.waits(priority), 99)

    @property
    def max_wait(self) -> float:
        return max(self.waits())

    @property
    def gpu_busy(self) -> float:
        return self.busy_s / (self.makespan * self.n_gpus)


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(p / 100 * len(xs)) - 1))]


def _leave(tier: WarmTier | None, m: SimModel, t: float) -> None:
    """`m` left the GPU at `t`: with a warm tier, its weights stay in host memory if they fit."""
    if tier is not None and m.warm_load_s is not None:
        tier.keep(m.name, m.vram_gb, m.load_s - m.warm_load_s, t)


def _load_time(tier: WarmTier | None, m: SimModel, *, consume: bool = True) -> tuple[float, bool]:
    """`m`'s load time, and whether it loads warm: when it starts loading its warm copy is
    consumed; `consume=False` only asks (only models with a warm_load_s are ever kept warm)."""
    if tier is not None and m.warm_load_s is not None and (tier.take(m.name) if consume else tier.is_warm(m.name)):
        return m.warm_load_s, True
    return m.load_s, False


def lower_bound(trace: list[TraceJob], models: dict[str, SimModel], n_gpus: int = 1) -> float:
    """The GPU serialises its work: the sum of service times (each weighted by its compute share:
    overlapping jobs may pack) plus one load per model with work, spread over the GPUs; and never
    less than the time from the first arrival to the end of the last-arriving job."""
    work = (sum(j.service_s * job_share(models[j.model].overlap) for j in trace)
            + sum(models[m].load_s for m in {j.model for j in trace}))
    first = min(j.arrival for j in trace)
    tail = max(j.arrival + j.service_s for j in trace) - first
    return max(work / n_gpus, tail)


@dataclass
class _Replica:
    gpu: str
    loading: bool = True
    running: TraceJob | None = None
    last_end: float | None = None
    last_start: float = -math.inf


def simulate(trace: list[TraceJob], models: list[SimModel], gpus: list[Gpu], cfg: PolicyConfig = PolicyConfig(),
             service_estimate: dict[str, float] | None = None, turns: bool = False,
             host_budget_gb: float | None = None) -> SimResult:
    """Run the trace under the arbiter policy, each GPU shared by what runs on it (core.gpu_share).
    `turns`: jobs of different models on one GPU take turns (core.gpu_share.may_start; the model
    whose last job started longest ago goes next, after priority) instead of running side by side.
    `host_budget_gb`: the warm tier's host memory (None: no warm tier)."""
    tier = WarmTier(host_budget_gb) if host_budget_gb is not None else None
    warm_loads = 0
    mdl = {m.name: m for m in models}
    trace = sorted(trace, key=lambda j: j.arrival)
    records = {id(j): JobRecord(j) for j in trace}
    queues: dict[str, list[TraceJob]] = {m: [] for m in mdl}
    reps: dict[str, _Replica] = {}
    shared = {g.id: SharedGpu() for g in gpus}
    resident_since: dict[str, float] = {}
    cold_since: dict[str, float] = {}
    loads = swaps = 0
    busy = load_s = 0.0
    budget = SwapBudget(cfg.swap_budget, cfg.swap_window_s)
    est = service_estimate or _mean_service(trace)
    arrivals = iter(trace)
    next_arrival = next(arrivals, None)
    peak: dict[str, float] = {g.id: 0.0 for g in gpus}
    t = 0.0 if next_arrival is None else next_arrival.arrival
    next_tick = math.inf
    done = 0
    d = None
    cold_from: dict[str, float] = {}  # model -> since when it has had work and no replica
    cold_max: dict[str, float] = {m: 0.0 for m in mdl}

    def note_cold() -> None:
        for name in mdl:
            if queues[name] and name not in reps:
                cold_from.setdefault(name, t)
            elif name in cold_from:
                cold_max[name] = max(cold_max[name], t - cold_from.pop(name))

    while done < len(trace):
        # The next event: an arrival, a task ending on some GPU, or the periodic look.
        ends = [e for e in (g.next_end() for g in shared.values()) if e is not None]
        step = min([next_tick - t] + ([next_arrival.arrival - t] if next_arrival is not None else []) + ends)
        if step == math.inf:
            raise RuntimeError(f"simulation stalled at t={t:.1f}s with {len(trace) - done} jobs left")
        step = max(0.0, step)
        t += step
        for gid, g in shared.items():
            for kind, name in g.advance(step):
                r = reps[name]
                if kind == "load":
                    r.loading = False
                    resident_since[name] = t
                else:
                    records[id(r.running)].end = t
                    busy += r.running.service_s
                    r.running, r.last_end = None, t
                    done += 1
        while next_arrival is not None and next_arrival.arrival <= t + 1e-9:
            queues[next_arrival.model].append(next_arrival)
            next_arrival = next(arrivals, None)
        note_cold()
        # Decide and apply until stable: an eviction frees memory at once, so the newcomer can load
        # in the same instant (the live arbiter gets there on its next tick).
        for _ in range(4):
            changed = False
            views = []
            for name, m in mdl.items():
                r = reps.get(name)
                q = queues[name]
                resident = r is not None and not r.loading
                idle_from = (r.last_end if r.last_end is not None else resident_since.get(name)) if r else None
                views.append(ModelView(
                    name=name, vram_gb=m.vram_gb, load_s=m.load_s, service_s=est.get(name, 1.0),
                    replicas=1 if resident else 0, pending=1 if r is not None and not resident else 0,
                    placement=(r.gpu,) if r else (), in_flight=1 if r and r.running else 0, queued=len(q),
                    oldest_wait_s=t - min(j.arrival for j in q) if q else 0.0,
                    max_priority=max((j.priority for j in q), default=0),
                    idle_s=(t - idle_from) if r and not r.running and idle_from is not None else None,
                    resident_s=t - resident_since[name] if name in resident_since else 0.0,
                    cold_s=t - cold_since[name] if r is None and name in cold_since else None,
                    pin=m.pin, warm_load_s=m.warm_load_s,
                    warm=tier is not None and m.warm_load_s is not None and (
                        tier.is_warm(name) if r is None else tier.would_keep(m.vram_gb)),
                ))
            budget.refill(t)
            d = decide(views, gpus, cfg, budget.credits([g.id for g in gpus]))
            budget.note(d)
            # Apply: unload (instant, frees memory), then load (a task on its GPU like a job).
            for name, target in d.targets.items():
                r = reps.get(name)
                if target == 0 and r is not None and r.running is None:
                    if not any(a.verb is Verb.scale_to_zero and a.model == name for a in d.actions):
                        swaps += 1  # evicted or drained for another model, not an idle-TTL release
                    shared[r.gpu].tasks.pop(("load", name), None)
                    del reps[name]
                    resident_since.pop(name, None)
                    cold_since[name] = t
                    _leave(tier, mdl[name], t)
                    changed = True
            for name, target in d.targets.items():
                if target > 0 and name not in reps:
                    gid = d.placements[name][0]
                    reps[name] = _Replica(gpu=gid)
                    took, warm = _load_time(tier, mdl[name])
                    shared[gid].add(("load", name), took, 1.0)
                    loads += 1
                    warm_loads += warm
                    load_s += took
                    budget.loaded(name, took)
            for gid in peak:
                peak[gid] = max(peak[gid], sum(mdl[n].vram_gb for n, r in reps.items() if r.gpu == gid))
            if not changed:
                break
        note_cold()
        # Dispatch to resident, non-draining models (each replica one job at a time).
        ready = [n for n, r in reps.items() if r.running is None and not r.loading and queues[n] and n not in d.draining]
        if turns:  # after priority, the model whose last job started longest ago
            ready.sort(key=lambda n: (-max(j.priority for j in queues[n]), reps[n].last_start, n))
        for name in ready:
            r = reps[name]
            share = job_share(mdl[name].overlap)
            if turns:
                running = {n: job_share(mdl[n].overlap) for n, o in reps.items() if o.gpu == r.gpu and o.running}
                if not may_start(share, running, name):
                    continue
            job = min(queues[name], key=lambda j: (-j.priority, j.arrival))
            queues[name].remove(job)
            r.running, r.last_start = job, t
            records[id(job)].start = t
            shared[r.gpu].add(("job", name), job.service_s, share)
        # Time-based rules (max wait, idle TTL, min residency) need a look even with no event.
        if not (any(queues.values()) or reps):
            next_tick = math.inf
        elif next_tick <= t + 1e-9 or next_tick == math.inf:
            next_tick = t + 1.0
    return SimResult(list(records.values()), loads, swaps, busy, len(gpus), peak, load_s, cold_max, warm_loads)


def simulate_fifo(trace: list[TraceJob], models: list[SimModel], gpus: list[Gpu],
                  host_budget_gb: float | None = None) -> SimResult:
    """FIFO with swap on demand: the head-of-line job runs next, on a GPU where its model is resident
    or can be loaded after evicting least-recently-used models. `host_budget_gb`: the warm tier's
    host memory, as in `simulate` (None: none)."""
    tier = WarmTier(host_budget_gb) if host_budget_gb is not None else None
    warm_loads = 0
    mdl = {m.name: m for m in models}
    trace = sorted(trace, key=lambda j: j.arrival)
    free_at = {g.id: 0.0 for g in gpus}
    resident: dict[str, dict[str, float]] = {g.id: {} for g in gpus}  # gpu -> model -> last used
    cap = {g.id: g.vram_gb for g in gpus}
    records, loads, swaps, busy, load_s = [], 0, 0, 0.0, 0.0
    for j in trace:
        m = mdl[j.model]
        cost, _ = _load_time(tier, m, consume=False)
        allowed = [g for g in gpus if m.pin is None or m.pin in (g.id, g.node_type)]
        # The earliest GPU to be free; prefer one that already holds the model.
        g = min(allowed, key=lambda g: (max(free_at[g.id], j.arrival) + (0 if j.model in resident[g.id] else cost), g.id))
        start = max(free_at[g.id], j.arrival)
        if j.model not in resident[g.id]:
            held = resident[g.id]
            while sum(mdl[n].vram_gb for n in held) + m.vram_gb > cap[g.id]:
                victim = min(held, key=held.get)
                del held[victim]
                swaps += 1
                _leave(tier, mdl[victim], start)
            took, warm = _load_time(tier, m)
            start += took
            loads += 1
            warm_loads += warm
            load_s += took
        resident[g.id][j.model] = start + j.service_s
        rec = JobRecord(j, start=start, end=start + j.service_s)
        records.append(rec)
        busy += j.service_s
        free_at[g.id] = rec.end
    return SimResult(records, loads, swaps, busy, len(gpus), load_s=load_s, warm_loads=warm_loads)


def _mean_service(trace: list[TraceJob]) -> dict[str, float]:
    tot: dict[str, list[float]] = {}
    for j in trace:
        tot.setdefault(j.model, []).append(j.service_s)
    return {k: sum(v) / len(v) for k, v in tot.items()}
