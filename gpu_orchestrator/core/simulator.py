"""Trace simulator for GPU scheduling policies. Pure and deterministic: event-driven, no clock.

Runs a job trace (arrival, model, service time, priority) on GPUs with per-model load costs, either
under the arbiter's policy (`simulate`, the same `core.policy.decide` the router uses) or under
FIFO-with-swap-on-demand (`simulate_fifo`: what the original system and Ollama do: run jobs in
arrival order, loading the next job's model, evicting least-recently-used ones to make room).
Each replica runs one job at a time (a GPU serialises work).
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field

from gpu_orchestrator.core.policy import Gpu, ModelView, PolicyConfig, Verb, decide
from gpu_orchestrator.core.swap_budget import SwapBudget


@dataclass(frozen=True)
class SimModel:
    name: str
    vram_gb: float
    load_s: float
    pin: str | None = None


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


def lower_bound(trace: list[TraceJob], models: dict[str, SimModel], n_gpus: int = 1) -> float:
    """Sum of service times plus one load per model with work, spread over the GPUs; and never less
    than the time from the first arrival to the end of the last-arriving job."""
    work = sum(j.service_s for j in trace) + sum(models[m].load_s for m in {j.model for j in trace})
    first = min(j.arrival for j in trace)
    tail = max(j.arrival + j.service_s for j in trace) - first
    return max(work / n_gpus, tail)


@dataclass
class _Replica:
    gpu: str
    ready_at: float
    running: TraceJob | None = None
    run_end: float = 0.0
    last_end: float | None = None


def simulate(trace: list[TraceJob], models: list[SimModel], gpus: list[Gpu], cfg: PolicyConfig = PolicyConfig(),
             service_estimate: dict[str, float] | None = None) -> SimResult:
    """Run the trace under the arbiter policy."""
    mdl = {m.name: m for m in models}
    trace = sorted(trace, key=lambda j: j.arrival)
    records = {id(j): JobRecord(j) for j in trace}
    queues: dict[str, list[TraceJob]] = {m: [] for m in mdl}
    reps: dict[str, _Replica] = {}
    resident_since: dict[str, float] = {}
    cold_since: dict[str, float] = {}
    last_end: dict[str, float] = {}
    loads = swaps = 0
    busy = load_s = 0.0
    budget = SwapBudget(cfg.swap_budget, cfg.swap_window_s)
    est = service_estimate or _mean_service(trace)
    events: list[tuple[float, int]] = []
    seq = itertools.count()
    for j in trace:
        heapq.heappush(events, (j.arrival, next(seq)))
    arrivals = iter(trace)
    next_arrival = next(arrivals, None)
    peak: dict[str, float] = {g.id: 0.0 for g in gpus}
    t = 0.0
    next_tick = -1.0  # one pending periodic look at a time
    done = 0
    while done < len(trace):
        if not events:
            raise RuntimeError(f"simulation stalled at t={t:.1f}s with {len(trace) - done} jobs left")
        t, _ = heapq.heappop(events)
        while events and events[0][0] <= t + 1e-9:
            heapq.heappop(events)
        while next_arrival is not None and next_arrival.arrival <= t + 1e-9:
            queues[next_arrival.model].append(next_arrival)
            next_arrival = next(arrivals, None)
        for name, r in list(reps.items()):
            if r.running is not None and r.run_end <= t + 1e-9:
                records[id(r.running)].end = r.run_end
                busy += r.running.service_s
                r.running, r.last_end = None, r.run_end
                last_end[name] = r.run_end
                done += 1
            if r.ready_at <= t + 1e-9 and name not in resident_since:
                resident_since[name] = r.ready_at
        # Decide and apply until stable: an eviction frees memory at once, so the newcomer can load
        # in the same instant (the live arbiter gets there on its next tick).
        for _ in range(4):
            changed = False
            views = []
            for name, m in mdl.items():
                r = reps.get(name)
                q = queues[name]
                resident = r is not None and r.ready_at <= t + 1e-9
                idle_from = (r.last_end if r and r.last_end is not None else resident_since.get(name)) if r else None
                views.append(ModelView(
                    name=name, vram_gb=m.vram_gb, load_s=m.load_s, service_s=est.get(name, 1.0),
                    replicas=1 if resident else 0, pending=1 if r is not None and not resident else 0,
                    placement=(r.gpu,) if r else (), in_flight=1 if r and r.running else 0, queued=len(q),
                    oldest_wait_s=t - min(j.arrival for j in q) if q else 0.0,
                    max_priority=max((j.priority for j in q), default=0),
                    idle_s=(t - idle_from) if r and not r.running and idle_from is not None else None,
                    resident_s=t - resident_since[name] if name in resident_since else 0.0,
                    cold_s=t - cold_since[name] if r is None and name in cold_since else None,
                    pin=m.pin,
                ))
            budget.refill(t)
            d = decide(views, gpus, cfg, budget.credits([g.id for g in gpus]))
            budget.note(d)
            # Apply: unload (instant, frees memory), then load.
            for name, target in d.targets.items():
                r = reps.get(name)
                if target == 0 and r is not None and r.running is None:
                    if not any(a.verb is Verb.scale_to_zero and a.model == name for a in d.actions):
                        swaps += 1  # evicted or drained for another model, not an idle-TTL release
                    del reps[name]
                    resident_since.pop(name, None)
                    cold_since[name] = t
                    changed = True
            for name, target in d.targets.items():
                if target > 0 and name not in reps:
                    gid = d.placements[name][0]
                    reps[name] = _Replica(gpu=gid, ready_at=t + mdl[name].load_s)
                    loads += 1
                    load_s += mdl[name].load_s
                    budget.loaded(name, mdl[name].load_s)
                    heapq.heappush(events, (t + mdl[name].load_s, next(seq)))
            for gid in peak:
                peak[gid] = max(peak[gid], sum(mdl[n].vram_gb for n, r in reps.items() if r.gpu == gid))
            if not changed:
                break
        # Dispatch to resident, non-draining models.
        for name, r in reps.items():
            if r.running is None and r.ready_at <= t + 1e-9 and queues[name] and name not in d.draining:
                job = min(queues[name], key=lambda j: (-j.priority, j.arrival))
                queues[name].remove(job)
                r.running, r.run_end = job, t + job.service_s
                records[id(job)].start = t
                heapq.heappush(events, (r.run_end, next(seq)))
        # Time-based rules (max wait, idle TTL, min residency) need a look even with no event.
        if (any(queues.values()) or reps) and next_tick <= t + 1e-9:
            next_tick = t + 1.0
            heapq.heappush(events, (next_tick, next(seq)))
        if next_arrival is not None:
            heapq.heappush(events, (next_arrival.arrival, next(seq)))
        if done == len(trace):
            break
    return SimResult(list(records.values()), loads, swaps, busy, len(gpus), peak, load_s)


def simulate_fifo(trace: list[TraceJob], models: list[SimModel], gpus: list[Gpu]) -> SimResult:
    """FIFO with swap on demand: the head-of-line job runs next, on a GPU where its model is resident
    or can be loaded after evicting least-recently-used models."""
    mdl = {m.name: m for m in models}
    trace = sorted(trace, key=lambda j: j.arrival)
    free_at = {g.id: 0.0 for g in gpus}
    resident: dict[str, dict[str, float]] = {g.id: {} for g in gpus}  # gpu -> model -> last used
    cap = {g.id: g.vram_gb for g in gpus}
    records, loads, swaps, busy, load_s = [], 0, 0, 0.0, 0.0
    for j in trace:
        m = mdl[j.model]
        allowed = [g for g in gpus if m.pin is None or m.pin in (g.id, g.node_type)]
        # The earliest GPU to be free; prefer one that already holds the model.
        g = min(allowed, key=lambda g: (max(free_at[g.id], j.arrival) + (0 if j.model in resident[g.id] else m.load_s), g.id))
        start = max(free_at[g.id], j.arrival)
        if j.model not in resident[g.id]:
            held = resident[g.id]
            while sum(mdl[n].vram_gb for n in held) + m.vram_gb > cap[g.id]:
                victim = min(held, key=held.get)
                del held[victim]
                swaps += 1
            start += m.load_s
            loads += 1
            load_s += m.load_s
        resident[g.id][j.model] = start + j.service_s
        rec = JobRecord(j, start=start, end=start + j.service_s)
        records.append(rec)
        busy += j.service_s
        free_at[g.id] = rec.end
    return SimResult(records, loads, swaps, busy, len(gpus), load_s=load_s)


def _mean_service(trace: list[TraceJob]) -> dict[str, float]:
    tot: dict[str, list[float]] = {}
    for j in trace:
        tot.setdefault(j.model, []).append(j.service_s)
    return {k: sum(v) / len(v) for k, v in tot.items()}
