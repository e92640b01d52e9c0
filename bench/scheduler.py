"""Scheduling policy benchmark on job traces: the arbiter vs FIFO-with-swap-on-demand vs a lower bound.

    python bench/scheduler.py [--max-wait 60] [--seed 7]

Pure simulation (gpu_orchestrator/core/simulator.py drives the same core.policy.decide the router uses), so
it is deterministic and takes seconds. One 24 GB GPU; three large models that never fit together
(16/14/12 GB, loads 8/6/5 s) and a small one (4 GB) that fits beside any of them.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_orchestrator.core.policy import Gpu, PolicyConfig  # noqa: E402
from gpu_orchestrator.core.simulator import SimModel, TraceJob, lower_bound, simulate, simulate_fifo  # noqa: E402

MODELS = [SimModel("sdxl", 16, 8.0), SimModel("llm", 14, 6.0), SimModel("zimage", 12, 5.0), SimModel("whisper", 4, 3.0)]
SERVICE = {"sdxl": 2.0, "llm": 1.5, "zimage": 1.0, "whisper": 0.8}
GPUS = [Gpu("gpu0", 24)]


def svc(rng: random.Random, model: str) -> float:
    return round(SERVICE[model] * rng.uniform(0.7, 1.3), 3)


def bursty(rng: random.Random) -> list[TraceJob]:
    """Batchy: each burst is 30 jobs of one model within 15 s; bursts 80 s apart."""
    out = []
    for b, model in enumerate(["sdxl", "llm", "zimage", "sdxl", "llm", "zimage"]):
        for _ in range(30):
            out.append(TraceJob(b * 80 + rng.uniform(0, 15), model, svc(rng, model)))
    return out


def batch_at_once(rng: random.Random) -> list[TraceJob]:
    """Batchy: 300 jobs of four models, all queued at t=0 in random order (a backlog)."""
    models = [m.name for m in MODELS]
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
    """Random models, ~55% utilisation before swaps; 10% of jobs carry priority 10."""
    out, t = [], 0.0
    names = ["sdxl", "llm", "zimage", "whisper"]
    while t < 900:
        t += rng.expovariate(0.4)
        m = rng.choice(names)
        out.append(TraceJob(t, m, svc(rng, m), priority=10 if rng.random() < 0.1 else 0))
    return out


TRACES = {
    "bursty": (bursty, "batchy"),
    "backlog": (batch_at_once, "batchy"),
    "interleaved": (interleaved, "interleaved"),
    "one-hot+rare": (one_hot, "mixed"),
    "priority-mix": (priority_mix, "mixed"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-wait", type=float, default=60.0, help="arbiter max_wait_s")
    ap.add_argument("--min-resident", type=float, default=30.0, help="arbiter min_resident_s")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    cfg = PolicyConfig(idle_ttl_s=300.0, max_wait_s=args.max_wait, min_resident_s=args.min_resident)
    models = {m.name: m for m in MODELS}
    print(f"one {GPUS[0].vram_gb:g} GB GPU; arbiter max_wait_s={cfg.max_wait_s:g}, min_resident_s={cfg.min_resident_s:g}, "
          f"idle_ttl_s={cfg.idle_ttl_s:g}; seed {args.seed}\n")
    hdr = (f"{'trace':<14}{'kind':<12}{'jobs':>5} {'policy':<8}{'makespan':>9}{'/LB':>7}{'/FIFO':>7}"
           f"{'mean wait':>10}{'p99 wait':>9}{'max wait':>9}{'loads':>6}{'swaps':>6}{'busy':>6}")
    print(hdr)
    print("-" * len(hdr))
    verdicts = []
    for name, (gen, kind) in TRACES.items():
        trace = gen(random.Random(args.seed))
        lb = lower_bound(trace, models, len(GPUS))
        ours = simulate(trace, MODELS, GPUS, cfg)
        fifo = simulate_fifo(trace, MODELS, GPUS)
        for label, r in (("arbiter", ours), ("fifo", fifo)):
            print(f"{name:<14}{kind:<12}{len(trace):>5} {label:<8}{r.makespan:>9.1f}{r.makespan / lb:>7.2f}"
                  f"{r.makespan / fifo.makespan:>7.2f}{r.mean_wait:>10.1f}{r.p99_wait():>9.1f}{r.max_wait:>9.1f}"
                  f"{r.loads:>6}{r.swaps:>6}{r.gpu_busy:>6.0%}")
        print(f"{'':<14}{'':<12}{'':>5} {'bound':<8}{lb:>9.1f}")
        if kind == "batchy":
            verdicts.append((name, f"makespan {ours.makespan / lb:.3f}x lower bound (target <= 1.10)", ours.makespan / lb <= 1.10))
        if kind == "interleaved":
            gain = 1 - ours.makespan / fifo.makespan
            verdicts.append((name, f"makespan {gain:.0%} lower than FIFO (target >= 30%)", gain >= 0.30))
        if kind == "mixed":
            p99 = ours.p99_wait()
            verdicts.append((name, f"p99 wait {p99:.1f} s vs bound max_wait_s {cfg.max_wait_s:g} s", p99 <= cfg.max_wait_s))
            if name == "priority-mix":
                hp, lp = ours.p99_wait(10), ours.p99_wait(0)
                print(f"{'':<31}p99 wait by priority: high {hp:.1f} s, normal {lp:.1f} s (FIFO: {fifo.p99_wait(10):.1f} / {fifo.p99_wait(0):.1f})")
        peak = max(ours.max_coresident_vram.values())
        assert peak <= GPUS[0].vram_gb, f"arbiter over budget: {peak} GB"
    print("\ntargets:")
    for name, text, ok in verdicts:
        print(f"  {'PASS' if ok else 'MISS'}  {name:<14} {text}")
    print(f"  (peak co-resident VRAM never above {GPUS[0].vram_gb:g} GB: checked on every trace)")
    print("notes: the lower bound counts every load as GPU time; a small model loading beside a running one\n"
          "overlaps its load with work, so a schedule can come in just under it (backlog). The p99 bound is\n"
          "reachable only below swap capacity: with three models that never fit together, each swap costs\n"
          "5-8 s, so priority-mix (0.4 jobs/s spread over them) needs ~30-60 s batches per model to keep up.")


if __name__ == "__main__":
    main()
