"""The per-model workers view (`GET /v1/workers`, and the seed's `/workers`): one entry per model
deployment, from what each source knows. Pure functions over plain inputs, plus `Fleet`, which
gathers the inputs (each source lossy: a missing one leaves its part of the view empty).

Sources: replica heartbeats (Redis), replica counts by state (Serve's status), queue stats (the
store) and the arbiter's latest snapshot.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from gpu_orchestrator.bus.decisions import Snapshot
from gpu_orchestrator.core.config import OrchestratorConfig
from gpu_orchestrator.service.arbiter.views import replica_counts
from gpu_orchestrator.store.base import AppQueueStats, JobReports

log = logging.getLogger("gpu_orchestrator.fleet")

ReplicaStates = dict[str, dict[str, int]]  # deployment -> {"RUNNING": 2, "STARTING": 1, ...}


def plain_state(states: dict[str, int]) -> str:
    """Without the arbiter: resident when a replica runs, loading while one starts, else cold."""
    running, starting, _ = replica_counts(states)
    return "resident" if running else "loading" if starting else "cold"


def models_view(cfg: OrchestratorConfig, beats: list[dict[str, Any]], replica_states: ReplicaStates,
                stats: dict[str, AppQueueStats], snapshot: Snapshot | None = None) -> list[dict[str, Any]]:
    """One entry per model deployment of `cfg`. `snapshot`: the arbiter's latest decision, or None."""
    out = []
    synthetic = {a.id: a.synthetic for a in cfg.apps}
    for name, spec in cfg.models.items():
        apps = [a.id for a in cfg.apps if a.deployment == name]
        replicas = [b for b in beats if b.get("deployment") == name]
        arb = (snapshot.models.get(name) if snapshot is not None else None) or {}
        held = [r.get("vram_held_gb") for r in replicas if r.get("vram_held_gb") is not None]
        load_errors = [r["load_error"] for r in replicas if r.get("load_error")]
        loads = [r["load_time_s"] for r in replicas if r.get("load_time_s") is not None]
        failed = bool(replicas) and len(load_errors) == len(replicas)
        # Parked replicas (the warm tier) run for Serve but hold their weights in host memory.
        warm = bool(replicas) and all(r.get("state") == "warm" for r in replicas)
        out.append({
            # A replica up but unable to load its model is "failed" whatever Serve says.
            "state": "failed" if failed else "warm" if warm else (arb.get("state") or plain_state(replica_states.get(name, {}))),
            "host_held_gb": sum(r.get("host_held_gb") or 0.0 for r in replicas) if replicas else None,
            "load_error": load_errors[0] if load_errors else None,
            "load_time_s": max(loads) if loads else None,
            "vram_held_gb": sum(held) if held else None,
            "last_used": max((r.get("last_used") or 0 for r in replicas), default=None) or None,
            "arbiter": arb or None,
            "deployment": name,
            "impl": spec.impl,
            "synthetic": any(synthetic[a] for a in apps),
            "apps": apps,
            "target_replicas": arb.get("target", spec.num_replicas),
            "replica_states": replica_states.get(name, {}),
            "replicas": replicas,
            "queued": sum(stats[a].queued for a in apps if a in stats),
            "running": sum(stats[a].running for a in apps if a in stats),
            "vram_declared_gb": cfg.model_vram_gb(name),
        })
    return out


def load_failures(beats: list[dict[str, Any]]) -> dict[str, str]:
    """Model deployments whose every replica reports a load error, with the first error."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for b in beats:
        by_model.setdefault(b.get("deployment") or "", []).append(b)
    return {m: rs[0]["load_error"] for m, rs in by_model.items() if m and all(r.get("load_error") for r in rs)}


def cloud_view(cfg: OrchestratorConfig, unavailable: dict[str, str | None]) -> list[dict[str, Any]]:
    """One entry per configured cloud backend: whether it can be used (never a token) and its apps."""
    out = []
    for name, why in sorted(unavailable.items()):
        only = [a.id for a in cfg.apps if a.cloud is not None and a.cloud.backend == name]
        fallback = [a.id for a in cfg.apps if a.fallback is not None and a.fallback.backend == name]
        out.append({"backend": name, "available": why is None, "reason": why, "apps": only,
                    "fallback_for": fallback})
    return out


def arbiter_view(s: Snapshot | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {"leader": s.leader, "decided_at": s.ts, "targets": s.targets, "dispatchable": s.dispatchable,
            "draining": s.draining, "reasons": s.reasons, "swap_credit_s": s.swap_credit_s, "history": s.history,
            "gpus": s.gpus, "parked": s.parked, "hosts": s.hosts}


def seed_workers(models: list[dict[str, Any]]) -> dict[str, Any]:
    """The seed orchestrator's shape: one row per (replica, app)."""
    out = []
    for m in models:
        for r in m["replicas"]:
            for app_id in m["apps"]:
                out.append({"worker_id": r["replica_id"], "app_id": app_id, "status": r["state"],
                            "last_heartbeat": r.get("last_heartbeat")})
    return {"count": len(out), "workers": out}


class Fleet:
    """Gathers the view's inputs. `heartbeats` (async) and `replica_states` (sync, run in a thread)
    may fail: their part is then empty. `snapshot` is None without an arbiter."""

    def __init__(self, cfg: OrchestratorConfig, store: JobReports, *,
                 heartbeats: Callable[[], Awaitable[list[dict[str, Any]]]],
                 replica_states: Callable[[], ReplicaStates] = dict,
                 snapshot: Callable[[], Snapshot | None] | None = None,
                 cloud: dict[str, str | None] | None = None):
        self.cfg = cfg
        self.cloud = cloud or {}  # cloud backend -> why it is unavailable (None: usable)
        self.store = store
        self.heartbeats = heartbeats
        self.replica_states = replica_states
        self.snapshot = snapshot

    async def models(self, snapshot: Snapshot | None = None) -> list[dict[str, Any]]:
        try:
            beats = await self.heartbeats()
        except Exception as e:  # heartbeats live in Redis: without it, Serve's view alone
            from gpu_orchestrator.bus.events import reason

            log.warning("worker heartbeats unavailable: %s", reason(e))
            beats = []
        try:
            states = await asyncio.to_thread(self.replica_states)
        except Exception as e:
            log.debug("replica states unavailable: %s", e)
            states = {}
        stats = await asyncio.to_thread(self.store.queue_stats)
        if snapshot is None and self.snapshot is not None:
            snapshot = self.snapshot()
        return models_view(self.cfg, beats, states, stats, snapshot)

    async def view(self) -> dict[str, Any]:
        """`GET /v1/workers`: the models, and the arbiter's latest decision when it runs here."""
        cloud = cloud_view(self.cfg, self.cloud)
        if self.snapshot is None:
            return {"models": await self.models(), "cloud": cloud}
        snap = self.snapshot()  # one decision for both parts
        return {"models": await self.models(snap), "arbiter": arbiter_view(snap), "cloud": cloud}
