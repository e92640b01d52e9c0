"""The leader's side of the warm tier (docs/warm.md): a model the policy takes off the GPU parks (its
replica stays, its weights in the node's host memory, its Serve target 1) instead of stopping,
when its node has room for it (core.warm.plan_parking); parked copies the node has no room for
stop. The park and wake calls go to the model replicas through their backends.

What the policy sees of a parked model: no replica (it holds no VRAM), `warm` with its measured
warm load time. Once the policy loads it again it is dispatchable at once: its replica is up and
its first job wakes it (the leader's wake call starts the copy even before a job arrives).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Mapping

from gpu_orchestrator.core.config import OrchestratorConfig
from gpu_orchestrator.core.policy_types import Decision, ModelView
from gpu_orchestrator.core.warm import HostMemory, WarmCopy, plan_parking, room

log = logging.getLogger("gpu_orchestrator.arbiter")
RETRY_PARK_S = 1.0  # a refused park (a job still ran there) is asked again this often
CALL_TIMEOUT_S = 300.0  # a park or wake that takes longer is given up (the heartbeats tell the rest)


@dataclass
class Replicas:
    """One model's live replicas by what their heartbeats (or the leader's last call) say."""

    warm: int = 0  # parked: weights in host memory, no VRAM
    parking: int = 0
    waking: int = 0
    cold: int = 0  # alive, model dropped after a failed park or wake (its next job loads it)
    idle: int = 0  # resident with no job
    busy: int = 0
    other: int = 0  # failed to load (or unknown): not parkable
    node: str | None = None
    gpu_index: int | None = None
    last_used: float | None = None
    host_gb: float = 0.0

    @property
    def resident(self) -> int:
        return self.idle + self.busy + self.other

    @property
    def asleep(self) -> bool:
        """Up but off the GPU (parked, or dropped after a failed park or wake), none on it: once the
        policy loads the model, a job may be sent to it (the job wakes it, or loads it in place)."""
        return bool(self.warm or self.cold) and not self.resident

    @property
    def off_gpu(self) -> int:
        """Replicas Serve counts as running that hold no VRAM and take no work until woken."""
        return self.warm + self.cold + self.parking + self.waking


def replicas(beats: Iterable[dict[str, Any]], last: Mapping[str, dict[str, Any]]) -> dict[str, Replicas]:
    """Per model deployment. Where the leader's last park or wake of a model answered after a
    replica's heartbeat (both stamped by that replica's clock), the answer's state and host memory
    stand for that replica (heartbeats come every 2 s; calls answer at once). A replica that went
    away counts until its heartbeat key expires (bus.workers.TTL_S)."""
    out: dict[str, Replicas] = {}
    for b in beats:
        name = b.get("deployment")
        r = out.setdefault(name, Replicas())
        state, host_gb = b.get("state"), float(b.get("host_held_gb") or 0.0)
        said = last.get(name)
        if (said is not None and said.get("replica_id") == b.get("replica_id")
                and (b.get("last_heartbeat") or 0.0) < (said.get("at") or 0.0)):
            state, host_gb = said.get("state"), float(said.get("host_gb") or 0.0)
        if state in ("warm", "parking", "waking", "cold", "busy"):
            setattr(r, state, getattr(r, state) + 1)
        elif state in ("resident", "loading"):  # loading: a beat sent before its load ended (Serve knows)
            r.idle += 1
        else:
            r.other += 1
        if r.node is None:
            r.node, r.gpu_index = b.get("node_id") or b.get("node"), b.get("gpu_index")
        r.last_used = max(filter(None, [r.last_used, b.get("last_used")]), default=None)
        r.host_gb += host_gb
    return out


def hosts(beats: Iterable[dict[str, Any]], budget_gb: float | None, share: float) -> dict[str, HostMemory]:
    """Per node: the warm tier's budget (configured, else `share` of the RAM the replicas report)
    and the free RAM reported last."""
    seen: dict[str, tuple[float, dict[str, Any]]] = {}
    for b in beats:
        node = b.get("node_id") or b.get("node")
        if node and b.get("host_total_gb") and (node not in seen or (b.get("last_heartbeat") or 0) > seen[node][0]):
            seen[node] = (b.get("last_heartbeat") or 0.0, b)
    return {node: HostMemory(budget_gb if budget_gb is not None else share * float(b["host_total_gb"]),
                             b.get("host_free_gb"))
            for node, (_, b) in seen.items()}


class WarmKeeper:
    """The leader's park and wake calls, and which models it keeps parked (`kept`)."""

    def __init__(self, cfg: OrchestratorConfig, backends: Mapping[str, Any],
                 on_woke: Callable[[str, float], None], clock: Callable[[], float]):
        self.cfg = cfg
        self.spec = cfg.arbiter.warm
        self.backends = backends
        self.on_woke = on_woke  # (model, when): a wake the leader asked for answered
        self.clock = clock
        # Followers act on a decision up to a tick late: a park waits that long, so a job one of
        # them dispatched just before the eviction does not wake the model again behind it.
        self.park_after_s = 2 * cfg.arbiter.tick_s
        self.kept: set[str] = set()  # parked (or being parked): Serve keeps their replica
        self.unparkable: set[str] = set()  # models whose replicas answered that they cannot park
        self.last: dict[str, dict[str, Any]] = {}  # model -> the last park or wake answer
        self.hosts: dict[str, HostMemory] = {}
        self._calls: dict[str, asyncio.Task] = {}
        self._tried: dict[str, float] = {}
        self._leaving_since: dict[str, float] = {}
        self._told: set[str] = set()  # models whose stop instead of a park was logged (once each time)

    @property
    def enabled(self) -> bool:
        return self.spec.enabled

    def observe(self, beats: list[dict[str, Any]]) -> dict[str, Replicas]:
        # Also with the tier off (a budget of 0): the host gauges say so rather than go missing.
        self.hosts = hosts(beats, self.spec.host_budget_gb if self.enabled else 0.0, self.spec.host_budget_share)
        return replicas(beats, self.last)

    def keepable(self, reps: Mapping[str, Replicas]) -> set[str]:
        """Resident models whose node could keep them warm when they leave (their reload cost is
        the warm one, for the policy's weighing of a swap)."""
        out: set[str] = set()
        for name, r in reps.items() if self.enabled else ():
            host = self.hosts.get(r.node or "")
            if (name in self.cfg.models and name not in self.unparkable and host is not None
                    and self.cfg.model_vram_gb(name) <= host.budget_gb):
                out.add(name)
        return out

    def after(self, views: list[ModelView], d: Decision, reps: Mapping[str, Replicas],
              states: Mapping[str, Mapping[str, int]]) -> None:
        """After the policy decided: which models stay parked or park now, which parked copies go,
        and the park and wake calls that takes."""
        if not self.enabled:
            return
        now = self.clock()
        held: dict[str, list[WarmCopy]] = {}
        leaving: dict[str, list[WarmCopy]] = {}
        by_name = {v.name: v for v in views}
        for name, r in reps.items():
            v = by_name.get(name)
            if v is None or d.targets.get(name, 0) > 0 or not r.node:
                continue
            saving = max(0.0, v.load_s - (v.warm_load_s or 0.0))
            since = r.last_used or now
            if r.warm or r.parking:  # a park under way holds its share of the room already
                held.setdefault(r.node, []).append(WarmCopy(name, r.host_gb or v.vram_gb, saving, since))
            # Only a replica Serve still runs: one it is stopping is let go (keeping it now would
            # have Serve start a fresh replica that loads from disk).
            elif (r.idle or r.busy) and not r.other and name not in self.unparkable and states.get(name, {}).get("RUNNING"):
                leaving.setdefault(r.node, []).append(WarmCopy(name, v.vram_gb, saving, since))
        park, drop = plan_parking(held, leaving, self.hosts, self.spec.min_free_gb)
        kept = {c.name for copies in held.values() for c in copies} - drop | park
        self._tell_stops(d, reps, states, kept)
        for name in sorted(drop):
            log.info("arbiter: dropping %s's warm copy (its node needs the host memory)", name)
        for name in sorted(park - self.kept):
            log.info("arbiter: %s parks in host memory (warm) instead of stopping", name)
        self.kept = kept
        self._leaving_since = {n: self._leaving_since.get(n, now) for n in park}
        for name in park:
            r, s = reps[name], states.get(name, {})
            # One idle replica left (Serve stops the others first), no call under way, not asked just now.
            if (r.idle == 1 and r.resident == 1 and s.get("RUNNING", 0) == 1 and not s.get("STARTING")
                    and now - self._leaving_since[name] >= self.park_after_s
                    and now - self._tried.get(name, 0.0) >= RETRY_PARK_S):
                self._call(name, "park")
        for name, r in reps.items():
            if r.warm and d.targets.get(name, 0) > 0 and name not in d.draining:
                self._call(name, "wake")

    def _tell_stops(self, d: Decision, reps: Mapping[str, Replicas], states: Mapping[str, Mapping[str, int]],
                    kept: set[str]) -> None:
        """Log once, each time, why a model leaving the GPU stops instead of parking."""
        for name in self.cfg.models:
            if d.targets.get(name, 0) > 0 or not states.get(name, {}).get("RUNNING"):
                self._told.discard(name)
                continue
            if name in kept or name in self._told:
                continue
            r = reps.get(name)
            why = ("no heartbeat from its replica" if r is None
                   else "it cannot park" if name in self.unparkable
                   else "its node's memory is not reported" if (r.node or "") not in self.hosts
                   else "its replica failed to load" if r.other
                   else "its replica is already off the GPU" if not (r.idle or r.busy)
                   else "its node has no room in the warm tier's host-memory budget")
            log.info("arbiter: %s stops instead of parking: %s", name, why)
            self._told.add(name)

    def host_report(self, reps: Mapping[str, Replicas]) -> dict[str, dict[str, Any]]:
        """Per node, for GET /v1/workers and the gauges: the budget, what parked copies hold, free RAM."""
        out = {}
        for node, h in self.hosts.items():
            held = sum(r.host_gb for r in reps.values() if r.node == node and r.warm)
            out[node] = {"budget_gb": round(h.budget_gb, 2), "held_gb": round(held, 2),
                         "free_gb": None if h.free_gb is None else round(h.free_gb, 2),
                         "room_gb": round(room(h, held, self.spec.min_free_gb), 2)}
        return out

    def _call(self, name: str, verb: str) -> None:
        task = self._calls.get(name)
        backend = self.backends.get(name)
        if (task is not None and not task.done()) or backend is None or not hasattr(backend, verb):
            return
        if verb == "park":
            self._tried[name] = self.clock()
        self._calls[name] = asyncio.get_running_loop().create_task(self._run(name, verb, getattr(backend, verb)))

    async def _run(self, name: str, verb: str, call: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        try:
            self._answer(name, verb, await asyncio.wait_for(call(), CALL_TIMEOUT_S))
        except Exception as e:  # the replica went away, or a call timed out: the heartbeats tell
            log.warning("arbiter: %s of %s failed: %s", verb, name, e, exc_info=not isinstance(e, asyncio.TimeoutError))

    def _answer(self, name: str, verb: str, answer: dict[str, Any]) -> None:
        if answer.get("state") and answer.get("at") is not None:
            self.last[name] = answer
        if verb == "park" and answer.get("unsupported"):
            log.info("arbiter: %s cannot park (%s): it stops when it leaves the GPU", name, answer.get("why"))
            self.unparkable.add(name)
        elif verb == "park" and not answer.get("parked"):
            log.info("arbiter: %s did not park: %s", name, answer.get("why"))
        elif verb == "wake" and answer.get("state") == "resident":
            self.on_woke(name, self.clock())

    async def aclose(self) -> None:
        for task in self._calls.values():
            task.cancel()
        await asyncio.gather(*self._calls.values(), return_exceptions=True)
