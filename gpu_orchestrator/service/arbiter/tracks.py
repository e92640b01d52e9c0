"""The leader's memory between ticks, per model: when it became resident, how long its loads take
(cold: from the load decision to a running replica, the replica's process start included; warm:
from the decision to the parked replica's answer that it woke), its last decision, loads and
evictions. Updated from the policy's typed actions and targets; no I/O.

Load times are learned, not the last sample: each new one moves the estimate half way (LEARN), so
one slow start (a cold page cache, a busy node) does not set the next swap's price alone.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Mapping

from gpu_orchestrator.core.policy_types import Action, Decision
from gpu_orchestrator.service.arbiter.ports import ArbiterMetrics

log = logging.getLogger("gpu_orchestrator.arbiter")
HISTORY = 30  # actions kept for GET /v1/workers
LEARN = 0.5  # weight of a new load time against the estimate so far
WARM = "@warm"  # the board's key suffix for a model's warm load time (beside its cold one)
VRAM = "@vram"  # and for its measured peak GPU memory


def learn(old: float | None, sample: float) -> float:
    return sample if old is None else old + LEARN * (sample - old)


@dataclass
class ModelTrack:
    resident_since: float | None = None
    cold_since: float | None = None  # when its last replica stopped running (None: not seen resident)
    load_started: float | None = None
    measured_load_s: float | None = None  # cold
    measured_warm_s: float | None = None  # from host memory (the warm tier)
    load_warm: bool = False  # the load under way is a wake
    measured_vram_gb: float | None = None  # the highest peak GPU memory a replica reported after a job
    last_target: int | None = None  # None until this leader has decided for the model
    placement: tuple[str, ...] = ()
    last_action: str | None = None
    last_action_at: float | None = None
    loads: int = 0
    evictions: int = 0


class DecisionBook:
    def __init__(self, models: Iterable[str], metrics: ArbiterMetrics):
        self.tracks: dict[str, ModelTrack] = {name: ModelTrack() for name in models}
        self.metrics = metrics
        # The latest distinct actions, oldest first (the admin page's "recent decisions").
        self.history: deque[tuple[float, str]] = deque(maxlen=HISTORY)
        # Load times learned since the board last heard: model (cold) or model@warm -> seconds.
        self.measured: dict[str, float] = {}

    def adopt_loads(self, known: Mapping[str, float]) -> None:
        """A new term: the load times learned by any leader (the board's) replace this replica's
        own, which may be older."""
        for key, value in known.items():
            name, field = key, "measured_load_s"
            for suffix, f in ((WARM, "measured_warm_s"), (VRAM, "measured_vram_gb")):
                if key.endswith(suffix):
                    name, field = key[:-len(suffix)], f
            if name in self.tracks:
                setattr(self.tracks[name], field, value)

    def observe_vram(self, beats: Iterable[dict]) -> None:
        """The peak GPU memory replicas report, once they have run a job (a load alone does not
        show the working memory); the highest one seen is kept, and shared on the board."""
        for b in beats:
            tr, peak = self.tracks.get(b.get("deployment")), b.get("vram_peak_gb")
            if tr is None or not peak or not b.get("jobs_done"):
                continue
            if tr.measured_vram_gb is None or peak > tr.measured_vram_gb + 0.01:
                tr.measured_vram_gb = float(peak)
                self.measured[b["deployment"] + VRAM] = tr.measured_vram_gb

    def new_term(self) -> None:
        """Leadership (re)gained: forget this replica's own targets and load timings; counts and
        measured load times stay."""
        for tr in self.tracks.values():
            tr.last_target = None
            tr.load_started = None

    def observe(self, running: Mapping[str, int], now: float) -> None:
        """Before deciding: replicas running per model. The first running replica after a load
        decision ends that load (its time becomes the model's load_s)."""
        for name, tr in self.tracks.items():
            if running.get(name, 0) > 0 and tr.resident_since is None:
                tr.resident_since = now
                # A wake is timed by the replica's answer (woke), not by the next heartbeat.
                if tr.load_started is not None and not tr.load_warm:
                    seconds = now - tr.load_started
                    tr.measured_load_s = learn(tr.measured_load_s, seconds)
                    self.measured[name] = tr.measured_load_s  # for the board, beyond this term
                    self.metrics.load_seconds(name, seconds, warm=False)
                    tr.load_started = None
                    self.history.append((now, f"{name} loaded in {seconds:.1f} s"))
            if running.get(name, 0) == 0:
                if tr.resident_since is not None:
                    tr.cold_since = now
                tr.resident_since = None

    def woke(self, name: str, now: float) -> None:
        """A parked replica this leader loaded answered that it woke: that load's time, warm."""
        tr = self.tracks.get(name)
        if tr is None or tr.load_started is None or not tr.load_warm:
            return
        seconds = now - tr.load_started
        tr.measured_warm_s = learn(tr.measured_warm_s, seconds)
        self.measured[name + WARM] = tr.measured_warm_s
        self.metrics.load_seconds(name, seconds, warm=True)
        tr.load_started = None
        self.history.append((now, f"{name} woke from host memory in {seconds:.2f} s"))

    def record(self, d: Decision, now: float, warm: frozenset[str] | set[str] = frozenset()) -> list[str]:
        """After deciding: each model's latest action (its own, or one making room for it) and its
        target crossing zero, counted as a load (`warm`: the models parked now, whose load is a
        wake) or an eviction. Returns the models it counted a load for."""
        loaded: list[str] = []
        fresh: list[str] = []
        concerning: dict[str, list[Action]] = {}  # model -> the acting actions that concern it, in order
        for a in d.actions:
            if a.acting:
                for name in a.concerned:
                    concerning.setdefault(name, []).append(a)
        for name, tr in self.tracks.items():
            new = d.targets.get(name, 0)
            acting = concerning.get(name, [])
            if acting:
                if acting[-1].text != tr.last_action:
                    fresh.append(acting[-1].text)
                tr.last_action, tr.last_action_at = acting[-1].text, now
            if not tr.last_target and new > 0:
                loaded.append(name)
                tr.loads += 1
                tr.load_started = now
                tr.load_warm = name in warm
                self.metrics.loaded(name, warm=tr.load_warm)
            elif tr.last_target and new == 0:
                tr.evictions += 1
                self.metrics.evicted(name)
            tr.last_target = new
            if new > 0:
                tr.placement = d.placements.get(name, tr.placement)
        for text in dict.fromkeys(fresh):  # one action can concern two models (evict X for Y)
            log.info("arbiter: %s", text)
            self.history.append((now, text))
        return loaded
