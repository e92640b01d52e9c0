"""The GPU arbiter's loop inside the router: one leader router replica (a Postgres advisory lock)
gathers the queue, replica states and heartbeats, runs the pure policy (gpu_orchestrator.core.policy),
reports targets to Serve via record_autoscaling_stats, and shares the decision through Redis so
every router's dispatcher only sends work to models the arbiter made resident.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from gpu_orchestrator.bus import workers as worker_beats
from gpu_orchestrator.core.policy import Decision, Gpu, ModelView, PolicyConfig, decide
from gpu_orchestrator.core.config import OrchestratorConfig
from gpu_orchestrator.store.postgres import JobStore

log = logging.getLogger("gpu_orchestrator.core.policy")

LEADER_KEY = "arbiter_leader"
TS_KEY = "arbiter_ts"
TARGET_PREFIX = "target:"
_LOCK = 0x6172626974  # "arbit"


@dataclass
class ModelTrack:
    """What the leader remembers between ticks for one model."""

    resident_since: float | None = None
    load_started: float | None = None
    measured_load_s: float | None = None
    last_target: int = 0
    placement: tuple[str, ...] = ()
    last_action: str | None = None
    last_action_at: float | None = None
    loads: int = 0
    evictions: int = 0


@dataclass
class Snapshot:
    """The decision every router replica acts on (published by the leader)."""

    ts: float
    leader: str
    targets: dict[str, int]
    dispatchable: list[str]
    draining: list[str]
    reasons: list[str]
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    unplaceable: dict[str, str] = field(default_factory=dict)


class ArbiterLoop:
    def __init__(self, *, cfg: OrchestratorConfig, store: JobStore, redis: Any, owner: str, app_name: str,
                 metrics: Any = None, on_change: Any = None):
        self.cfg = cfg
        self.store = store
        self.r = redis
        self.owner = owner
        self.app_name = app_name
        self.metrics = metrics
        self.on_change = on_change or (lambda: None)  # pokes the dispatcher when residency changes
        self.policy = PolicyConfig(
            idle_ttl_s=cfg.arbiter.idle_ttl_s, max_wait_s=cfg.arbiter.max_wait_s, min_resident_s=cfg.arbiter.min_resident_s
        )
        self.key = f"gpu-orch:arbiter:{app_name}:decision"
        self.track = {name: ModelTrack() for name in cfg.models}
        self.snapshot: Snapshot | None = None
        self.is_leader = False
        self._lock_conn: sa.Connection | None = None
        self._service: dict[str, float] = {}
        self._service_at = 0.0
        self._pools: list[Gpu] | None = None
        self._node_pool: dict[str, str] = {}
        self._pools_at = 0.0
        self._task: asyncio.Task | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                self.is_leader = await asyncio.to_thread(self._hold_lock)
                if self.is_leader:
                    snap = await self._lead()
                    await self.r.set(self.key, json.dumps(snap.__dict__), ex=30)
                else:
                    raw = await self.r.get(self.key)
                    snap = Snapshot(**json.loads(raw)) if raw else None
                before = set(self.snapshot.dispatchable) if self.snapshot else set()
                self.snapshot = snap
                if snap is not None and set(snap.dispatchable) != before:
                    self.on_change()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("arbiter tick failed")
                await asyncio.sleep(1.0)
            await asyncio.sleep(self.cfg.arbiter.tick_s)

    def _hold_lock(self) -> bool:
        """Leader election: a session-level advisory lock on a dedicated connection. If this
        replica dies (or its connection does), the lock is released and another replica leads."""
        try:
            if self._lock_conn is None:
                self._lock_conn = self.store.engine.connect()
                got = self._lock_conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": _LOCK}).scalar()
                self._lock_conn.commit()
                if not got:
                    self._lock_conn.close()
                    self._lock_conn = None
                return bool(got)
            self._lock_conn.execute(sa.text("SELECT 1"))
            self._lock_conn.commit()
            return True
        except Exception as e:
            log.warning("arbiter leadership lost: %s", e)
            if self._lock_conn is not None:
                try:
                    self._lock_conn.invalidate()
                except Exception:
                    pass
            self._lock_conn = None
            return False

    # -- the leader's tick ------------------------------------------------------------------------

    async def _lead(self) -> Snapshot:
        now = time.time()
        stats = await asyncio.to_thread(self.store.queue_stats)
        if now - self._service_at > 10:
            self._service = await asyncio.to_thread(self.store.service_times)
            self._service_at = now
        states = await asyncio.to_thread(_serve_states, self.app_name)
        beats = await worker_beats.read_all(self.r)
        pools = await asyncio.to_thread(self._gpu_pools, now)
        views = []
        for name, spec in self.cfg.models.items():
            apps = [a for a in self.cfg.apps if a.deployment == name]
            st = states.get(name, {})
            running, starting, stopping = st.get("RUNNING", 0), st.get("STARTING", 0) + st.get("UPDATING", 0), st.get("STOPPING", 0)
            mine = [b for b in beats if b.get("deployment") == name]
            queued = sum(stats[a.id].queued for a in apps if a.id in stats)
            in_flight = sum(stats[a.id].running for a in apps if a.id in stats)
            oldest = max((stats[a.id].oldest_queued_age_s or 0.0 for a in apps if a.id in stats), default=0.0)
            prio = max((stats[a.id].max_queued_priority or 0 for a in apps if a.id in stats and stats[a.id].queued), default=0)
            tr = self.track[name]
            if running > 0 and tr.resident_since is None:
                tr.resident_since = now
                if tr.load_started is not None:
                    tr.measured_load_s = now - tr.load_started
                    if self.metrics is not None:
                        self.metrics.load_seconds.observe(tr.measured_load_s, tags={"model": name})
                    tr.load_started = None
            if running == 0:
                tr.resident_since = None
            last_used = max((b.get("last_used") or 0.0 for b in mine), default=0.0) or None
            idle_from = max(filter(None, [last_used, tr.resident_since]), default=None)
            placement = self._placement(name, mine, running + starting + stopping, pools)
            services = [self._service[a.id] for a in apps if a.id in self._service]
            views.append(ModelView(
                name=name,
                vram_gb=self.cfg.model_vram_gb(name),
                load_s=tr.measured_load_s if tr.measured_load_s is not None else spec.load_s,
                service_s=sum(services) / len(services) if services else 1.0,
                replicas=running,
                pending=starting,
                stopping=stopping,
                placement=placement,
                in_flight=in_flight,
                queued=queued,
                oldest_wait_s=oldest,
                max_priority=prio,
                idle_s=(now - idle_from) if idle_from is not None and in_flight == 0 else None,
                resident_s=(now - tr.resident_since) if tr.resident_since else 0.0,
                pin=spec.pin,
                max_replicas=spec.max_replicas,
                idle_ttl_s=spec.idle_ttl_s,
            ))
        d = decide(views, pools, self.policy)
        self._record(d, views, now)
        by_name = {v.name: v for v in views}
        models = {
            v.name: {
                "state": _state(v, d),
                "target": d.targets.get(v.name, 0),
                "replicas": v.replicas,
                "pending": v.pending,
                "stopping": v.stopping,
                "placement": list(d.placements.get(v.name, v.placement)),
                "vram_declared_gb": v.vram_gb,
                "queued": v.queued,
                "in_flight": v.in_flight,
                "idle_s": v.idle_s,
                "load_s": v.load_s,
                "loads": self.track[v.name].loads,
                "evictions": self.track[v.name].evictions,
                "last_decision": self.track[v.name].last_action,
                "last_decision_at": self.track[v.name].last_action_at,
            }
            for v in views
        }
        return Snapshot(
            ts=now, leader=self.owner, targets=d.targets,
            dispatchable=[n for n, v in by_name.items() if d.dispatchable(v)],
            draining=sorted(d.draining), reasons=list(d.reasons), models=models, unplaceable=dict(d.unplaceable),
        )

    def _record(self, d: Decision, views: list[ModelView], now: float) -> None:
        for v in views:
            tr = self.track[v.name]
            new = d.targets.get(v.name, 0)
            mine = [r for r in d.reasons if r.split(" ", 2)[1:2] == [v.name] or f" for {v.name}:" in r]
            acting = [r for r in mine if r.split(" ", 1)[0] in ("load", "evict", "drain", "scale", "add")]
            if acting:
                if acting[-1] != tr.last_action:
                    log.info("arbiter: %s", acting[-1])
                tr.last_action, tr.last_action_at = acting[-1], now
            if tr.last_target == 0 and new > 0:
                tr.loads += 1
                tr.load_started = now
                if self.metrics is not None:
                    self.metrics.loads.inc(tags={"model": v.name})
            elif tr.last_target > 0 and new == 0:
                tr.evictions += 1
                if self.metrics is not None:
                    self.metrics.evictions.inc(tags={"model": v.name})
            tr.last_target = new
            if new > 0:
                tr.placement = d.placements.get(v.name, tr.placement)

    def _placement(self, name: str, beats: list[dict], holding: int, pools: list[Gpu]) -> tuple[str, ...]:
        if holding == 0:
            return ()
        if len(pools) == 1:
            return (pools[0].id,) * holding
        known = [self._node_pool.get(b.get("node_id", "")) for b in beats]
        known = [k for k in known if k]
        if len(known) >= holding:
            return tuple(known[:holding])
        return tuple(known) + tuple(self.track[name].placement[len(known):holding]) or self.track[name].placement

    def _gpu_pools(self, now: float) -> list[Gpu]:
        declared = self.cfg.arbiter.gpus
        if self._pools is not None and (declared or now - self._pools_at < 30):
            return self._pools
        nodes = _ray_nodes()
        node_pool: dict[str, str] = {}
        if declared:
            pools = [Gpu(g.id, g.vram_gb, g.node_type) for g in declared]
            for n in nodes:
                types = [k.split(":", 1)[1] for k in n["resources"] if k.startswith("node_type:")]
                match = next((p.id for p in pools if p.node_type and p.node_type in types), None)
                if match is None and len(pools) == 1:
                    match = pools[0].id
                if match:
                    node_pool[n["node_id"]] = match
        else:
            pools = []
            for n in nodes:
                if n["resources"].get("GPU", 0) <= 0:
                    continue
                types = [k.split(":", 1)[1] for k in n["resources"] if k.startswith("node_type:")]
                vram = n["resources"].get(self.cfg.arbiter.vram_resource or "vram_gb", self.cfg.arbiter.default_gpu_vram_gb)
                pid = types[0] if types else n["node_id"][:12]
                pools.append(Gpu(pid, float(vram), types[0] if types else ""))
                node_pool[n["node_id"]] = pid
        self._pools, self._node_pool, self._pools_at = pools, node_pool, now
        return pools

    # -- what the router uses ---------------------------------------------------------------------

    def _fresh(self) -> Snapshot | None:
        """The latest decision, unless it is too old to act on (the leader stopped publishing)."""
        s = self.snapshot
        return s if s is not None and time.time() - s.ts < 10 else None

    def dispatchable(self, model: str) -> bool:
        s = self._fresh()
        return s is not None and model in s.dispatchable

    def unplaceable(self, model: str) -> str | None:
        """Why this model's queued jobs can never run here (no GPU can hold it), or None."""
        s = self._fresh()
        return s.unplaceable.get(model) if s is not None else None

    def autoscaling_stats(self) -> dict[str, float]:
        s = self.snapshot
        if not self.is_leader or s is None:
            return {LEADER_KEY: 0.0}
        out = {LEADER_KEY: 1.0, TS_KEY: s.ts}
        out.update({f"{TARGET_PREFIX}{k}": float(v) for k, v in s.targets.items()})
        return out


def _state(v: ModelView, d: Decision) -> str:
    if v.name in d.draining:
        return "draining"
    if v.replicas > 0 and d.targets.get(v.name, 0) == 0:
        return "stopping"
    if v.replicas > 0:
        return "resident"
    if v.pending > 0 or d.targets.get(v.name, 0) > 0:
        return "loading"
    return "cold"


def _serve_states(app_name: str) -> dict[str, dict[str, int]]:
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return {}
    return {
        name: {str(getattr(k, "value", k)): n for k, n in d.replica_states.items()}
        for name, d in app.deployments.items()
    }


def _ray_nodes() -> list[dict[str, Any]]:
    import ray

    return [{"node_id": n["NodeID"], "resources": n.get("Resources", {})} for n in ray.nodes() if n.get("Alive")]
