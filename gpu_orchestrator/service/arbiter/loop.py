"""The GPU arbiter's loop inside the router. One router replica leads (it holds the LeaderLock): it
reads the queue, the cluster (replica states, nodes) and heartbeats, runs the pure policy
(core.policy.decide) and publishes the decision on the DecisionBoard. Every replica, leader or not,
acts on the latest published decision: its dispatcher only sends work to models the arbiter made
resident. The leader's targets reach Serve through record_autoscaling_stats (serve.autoscaling
encodes `snapshot` and `is_leader`).

No Ray, database or Redis here: every collaborator is a protocol (service.arbiter_ports,
store.base.LeaderLock, bus.decisions.DecisionBoard).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Mapping

from gpu_orchestrator.bus.decisions import DecisionBoard, Snapshot
from gpu_orchestrator.core.config import OrchestratorConfig
from gpu_orchestrator.core.policy import decide
from gpu_orchestrator.core.policy_types import PolicyConfig
from gpu_orchestrator.core.swap_budget import SwapBudget
from gpu_orchestrator.core.warm import load_cost
from gpu_orchestrator.service.arbiter.ports import (ArbiterMetrics, ClusterView, Heartbeats, NoArbiterMetrics,
                                                    QueueReader)
from gpu_orchestrator.service.arbiter.tracks import DecisionBook
from gpu_orchestrator.service.arbiter.views import (Pools, decision_snapshot, gpu_pools, model_views, model_wait, on_gpu,
                                                    packing_warnings, parked_context, quiet)
from gpu_orchestrator.service.arbiter.warm import WarmKeeper
from gpu_orchestrator.store.base import LeaderLock

log = logging.getLogger("gpu_orchestrator.arbiter")

LEADER_LOCK_KEY = 0x6172626974  # "arbit": the store's leader lock the replicas contend for
STALE_AFTER_S = 10.0  # a decision older than this is not acted on: the leader stopped publishing
SERVICE_TIMES_EVERY_S = 10.0  # mean job times move slowly; read them this often
NODES_EVERY_S = 30.0  # discovered GPU pools (declared pools are read once)


class ArbiterLoop:
    def __init__(self, *, cfg: OrchestratorConfig, store: QueueReader, lock: LeaderLock, board: DecisionBoard,
                 cluster: ClusterView, heartbeats: Heartbeats, owner: str, metrics: ArbiterMetrics | None = None,
                 on_change: Callable[[], None] | None = None, clock: Callable[[], float] = time.time,
                 backends: Mapping[str, Any] | None = None):
        self.cfg = cfg
        self.store = store
        self.lock = lock
        self.board = board
        self.cluster = cluster
        self.heartbeats = heartbeats
        self.owner = owner
        self.on_change = on_change or (lambda: None)  # pokes the dispatcher when residency changes
        self.clock = clock
        a = cfg.arbiter
        self.policy = PolicyConfig(idle_ttl_s=a.idle_ttl_s, max_wait_s=a.max_wait_s, min_resident_s=a.min_resident_s,
                                   swap_budget=a.swap_budget, swap_window_s=a.swap_window_s, starvation_s=a.starvation_s)
        self.budget = SwapBudget(a.swap_budget, a.swap_window_s)
        self.book = DecisionBook(cfg.models, metrics or NoArbiterMetrics())
        # The warm tier (cfg.arbiter.warm): parks and wakes the models through their backends.
        self.warm = WarmKeeper(cfg, backends or {}, self.book.woke, clock)
        self._declared = {name: cfg.model_vram_gb(name) for name in cfg.models}  # beside the measured peak
        self.snapshot: Snapshot | None = None
        self.is_leader = False
        self._service: dict[str, float] = {}
        self._service_at: float | None = None
        self._pools: Pools | None = None
        self._pools_at = 0.0
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop ticking and let another replica lead at once."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.warm.aclose()
        # Unconditionally: a hold() still running in its worker thread when the tick was cancelled
        # may have taken the lock although is_leader was never set.
        self.is_leader = False
        await asyncio.to_thread(self.lock.release)

    def poke(self) -> None:
        """A job was submitted here: decide now, not at the next (idle) tick."""
        if self._wake is not None:
            self._wake.set()

    async def _loop(self) -> None:
        self._wake = asyncio.Event()
        while True:
            self._wake.clear()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("arbiter tick failed")
                await asyncio.sleep(1.0)
            a = self.cfg.arbiter
            # Idle, a tick costs queries and an RPC to Serve's controller: look less often then.
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=a.idle_tick_s if quiet(self.snapshot) else a.tick_s)
            except asyncio.TimeoutError:
                pass

    async def tick(self) -> None:
        """One round: lead (decide and publish) or follow (read the leader's decision)."""
        was_leader = self.is_leader
        self.is_leader = await asyncio.to_thread(self._hold)
        snap: Snapshot | None
        if self.is_leader and not was_leader:
            # A new term: what this replica remembered from leading before (targets, swaps it made
            # room for) may be stale; another leader may have loaded models since.
            self.book.new_term()
            self.budget.forget_room()
            await self._adopt_loads()
        if self.is_leader:
            snap = await self._lead()
            await self.board.publish(snap)
            await self._remember_loads()
        else:
            snap = await self.board.read()
        before = set(self.snapshot.dispatchable) if self.snapshot else set()
        self.snapshot = snap
        if snap is not None and set(snap.dispatchable) != before:
            self.on_change()

    async def _adopt_loads(self) -> None:
        """The load times earlier leaders measured (kept on the board with no TTL)."""
        try:
            self.book.adopt_loads(await self.board.loads())
        except Exception as e:  # the declared figures, or this replica's own, until the board answers
            log.warning("arbiter: could not read the measured load times: %s", e)

    async def _remember_loads(self) -> None:
        measured, self.book.measured = self.book.measured, {}
        try:
            for model, seconds in measured.items():
                await self.board.remember_load(model, seconds)
        except Exception as e:  # kept for the next tick
            self.book.measured = {**measured, **self.book.measured}
            log.warning("arbiter: could not keep the measured load times: %s", e)

    def _hold(self) -> bool:
        try:
            held = self.lock.hold()
        except Exception as e:
            log.warning("arbiter leadership lost: %s", e)
            held = False
        if self.is_leader and not held:
            log.info("arbiter: %s no longer leads", self.owner)
        return held

    # -- the leader's tick ------------------------------------------------------------------------

    async def _lead(self) -> Snapshot:
        now = self.clock()
        stats = await asyncio.to_thread(self.store.queue_stats)
        if self._service_at is None or now - self._service_at > SERVICE_TIMES_EVERY_S:
            self._service = await asyncio.to_thread(self.store.service_times)
            self._service_at = now
        states = await asyncio.to_thread(self.cluster.replica_states)
        beats = await self.heartbeats.read_all()
        pools = await self._gpu_pools(now)
        self.book.observe_vram(beats)
        seen = self.warm.observe(beats)
        reps = seen if self.warm.enabled else None
        self.book.observe({name: on_gpu(states.get(name, {}), (reps or {}).get(name))[0] for name in self.cfg.models},
                          now)
        views = model_views(self.cfg, stats=stats, service=self._service, states=states, beats=beats,
                            tracks=self.book.tracks, pools=pools, now=now, reps=reps,
                            keepable=self.warm.keepable(reps) if reps is not None else frozenset())
        gpu_ids = [g.id for g in pools.gpus]
        gpus = parked_context(pools, reps, self.cfg.arbiter.warm.parked_vram_gb) if reps is not None else pools.gpus
        self.budget.refill(now)
        d = decide(views, gpus, self.policy, self.budget.credits(gpu_ids))
        self.budget.note(d)
        cost = {v.name: load_cost(v) for v in views}  # what each load spends: warm when parked
        parked = {name for name, r in (reps or {}).items() if r.warm}
        for name in self.book.record(d, now, warm=parked):
            self.budget.loaded(name, cost[name])
        if reps is not None:
            self.warm.after(views, d, reps, states)
        return decision_snapshot(views, d, self.book.tracks, leader=self.owner, now=now,
                                 swap_credit_s=self.budget.credits(gpu_ids), history=self.book.history,
                                 gpus=gpus, reps=reps, kept=self.warm.kept if reps is not None else (),
                                 hosts=self.warm.host_report(seen),
                                 declared=self._declared)

    async def _gpu_pools(self, now: float) -> Pools:
        if self._pools is not None and (self.cfg.arbiter.gpus or now - self._pools_at < NODES_EVERY_S):
            return self._pools
        nodes = await asyncio.to_thread(self.cluster.nodes)
        pools, self._pools_at = gpu_pools(nodes, self.cfg.arbiter), now
        if self._pools is None or pools.gpus != self._pools.gpus:
            for w in packing_warnings(self.cfg, pools):
                log.warning("%s", w)
        self._pools = pools
        return self._pools

    # -- what the router and the dispatcher use ---------------------------------------------------

    def _fresh(self) -> Snapshot | None:
        """The latest decision, unless it is too old to act on (the leader stopped publishing)."""
        s = self.snapshot
        return s if s is not None and self.clock() - s.ts < STALE_AFTER_S else None

    def dispatchable(self, model: str) -> bool:
        s = self._fresh()
        return s is not None and model in s.dispatchable

    def waiting_for(self, model: str) -> dict | None:
        """What a queued job of this model waits for (views.model_wait), or None: it takes work."""
        return model_wait(self._fresh(), model, self.clock())

    def unplaceable(self, model: str) -> str | None:
        """Why this model's queued jobs can never run here (no GPU can hold it), or None."""
        s = self._fresh()
        return s.unplaceable.get(model) if s is not None else None
