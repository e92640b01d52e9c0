"""How work on one GPU shares its compute. Pure: the trace simulator runs it, the policy and the
dispatcher follow the rule it states.

A GPU time-slices kernels from several processes: two compute-bound jobs on one GPU each take
about twice as long as alone. The model here is processor sharing by compute share:

- every task on a GPU (a job, or a model load: copying weights in is not free) has a compute share
  in 0..1, what it would use of the GPU alone. A job's share is `1 - overlap` of its model
  (`models.<name>.overlap`, default 0: the job saturates the GPU); a load's is 1;
- while the shares of the tasks on a GPU sum to S, each progresses at 1 / max(1, S) of its solo
  speed: two jobs with no overlap each take twice as long; two with overlap 0.5 run side by side
  at full speed.

Running jobs of two models at once on one GPU therefore buys no throughput unless they declare
overlap; it stretches both. Whether the dispatcher should then run them side by side anyway or
take turns is measured in bench/scheduler.py (docs/arbiter.md); `may_start` is the turn rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Iterable, Mapping

EPS = 1e-9


def job_share(overlap: float) -> float:
    """A job's compute share from its model's declared overlap (0: saturates the GPU)."""
    return min(1.0, max(0.0, 1.0 - overlap))


def slowdown(shares: Iterable[float]) -> float:
    """How much longer each task on a GPU takes than alone, given every task's compute share."""
    return max(1.0, sum(shares))


def may_start(share: float, running: Mapping[str, float], model: str) -> bool:
    """Whether `model` may start a job (compute share `share`) on a GPU where `running` maps each
    model with jobs running there to its jobs' share. Its own running jobs never block it (a
    replica batches its own work); another model's do unless their shares and this one fit in 1."""
    others = sum(s for m, s in running.items() if m != model)
    return others == 0 or others + share <= 1.0 + EPS


@dataclass
class SharedGpu:
    """The tasks running on one GPU and their remaining solo-speed work, advanced in time."""

    tasks: dict[Hashable, list[float]] = field(default_factory=dict)  # key -> [remaining s, share]

    def add(self, key: Hashable, work_s: float, share: float = 1.0) -> None:
        self.tasks[key] = [max(0.0, work_s), share]

    @property
    def slowdown(self) -> float:
        return slowdown(s for _, s in self.tasks.values())

    def next_end(self) -> float | None:
        """Seconds until the first task ends at the current sharing, or None when idle."""
        if not self.tasks:
            return None
        return min(r for r, _ in self.tasks.values()) * self.slowdown

    def advance(self, dt: float) -> list[Hashable]:
        """Move `dt` seconds on; returns the keys of the tasks that ended (removed)."""
        if dt > 0 and self.tasks:
            done = dt / self.slowdown
            for t in self.tasks.values():
                t[0] -= done
        ended = [k for k, (r, _) in self.tasks.items() if r <= EPS]
        for k in ended:
            del self.tasks[k]
        return ended
