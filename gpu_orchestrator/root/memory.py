"""The orchestrator over in-memory twins: MemoryJobStore, MemoryEventBus, MemoryAccess (keys),
MemoryDecisionBoard, a fixed cluster view and the caller's model backends. For tests of HTTP and
handle behaviour that have nothing to do with Postgres, Redis or Ray (they run in process, in
milliseconds), and for trying the API without any service."""

from __future__ import annotations

import uuid
from typing import Any, Mapping

from gpu_orchestrator.bus.decisions import MemoryDecisionBoard
from gpu_orchestrator.bus.memory import MemoryEventBus
from gpu_orchestrator.core.config import OrchestratorConfig, parse_config
from gpu_orchestrator.root.orchestrator import Orchestrator, Ports
from gpu_orchestrator.service.arbiter.ports import Node
from gpu_orchestrator.service.auth import KeyCache
from gpu_orchestrator.service.backends import ModelBackend
from gpu_orchestrator.service.cloud.backend import build_cloud
from gpu_orchestrator.service.transitions import CountingMetrics
from gpu_orchestrator.store.artifacts import ArtifactStore
from gpu_orchestrator.store.memory import MemoryJobStore
from gpu_orchestrator.store.memory_webhooks import MemoryWebhookQueue
from gpu_orchestrator.store.memory_access import MemoryAccess


class MemoryMetrics(CountingMetrics):
    """CountingMetrics with the gauges and the arbiter's counters as the gauge loop and the
    arbiter call them: the latest readings, the loads and evictions counted."""

    def __init__(self) -> None:
        super().__init__()
        self.queues: dict[str, Any] = {}
        self.arbiter_snapshot: Any = None
        self.loads: dict[str, int] = {}
        self.evictions: dict[str, int] = {}

    def flush(self) -> None:
        pass

    def set_queues(self, apps: Any, stats: Mapping[str, Any]) -> None:
        self.queues = dict(stats)

    def set_arbiter(self, snapshot: Any) -> None:
        self.arbiter_snapshot = snapshot

    def loaded(self, model: str, warm: bool = False) -> None:
        self.loads[model] = self.loads.get(model, 0) + 1

    def evicted(self, model: str) -> None:
        self.evictions[model] = self.evictions.get(model, 0) + 1

    def load_seconds(self, model: str, seconds: float, warm: bool = False) -> None:
        pass


class StaticCluster:
    """Every model the backends run counts as one running replica, on one node (`resources`)."""

    def __init__(self, models: list[str], resources: Mapping[str, float] | None = None):
        self.models = models
        self.resources = dict(resources or {})

    def replica_states(self) -> dict[str, dict[str, int]]:
        return {m: {"RUNNING": 1} for m in self.models}

    def nodes(self) -> list[Node]:
        return [Node("memory-node", self.resources)]


def in_memory(config: OrchestratorConfig | dict[str, Any], backends: Mapping[str, ModelBackend], *,
              store: MemoryJobStore | None = None, keys: MemoryAccess | None = None,
              artifacts: ArtifactStore | None = None, cloud_providers: Mapping[str, Any] | None = None) -> Orchestrator:
    """The orchestrator on the in-memory twins; `backends` by model deployment name (a model object
    through service/backends.py's InProcessBackend, or a test's fake). Its parts are reachable as
    attributes (`.store`, `.bus`, `.auth.keys`, `.metrics`). `artifacts`: a file store (uploads and
    outputs; none: the file routes answer 503); `cloud_providers` replace the real Modal and
    Replicate clients for the apps that name them (as serve/router.py takes them)."""
    cfg = config if isinstance(config, OrchestratorConfig) else parse_config(config)
    if cfg.router.auth == "auto":  # in process, nothing listens on a network: open, as on loopback
        cfg = cfg.model_copy(update={"router": cfg.router.model_copy(update={"auth": "off"})})
    if cfg.router.webhooks.allow_loopback is None:  # ... and loopback receivers are allowed
        wh = cfg.router.webhooks.model_copy(update={"allow_loopback": True})
        cfg = cfg.model_copy(update={"router": cfg.router.model_copy(update={"webhooks": wh})})
    key_cache = KeyCache()
    keys = keys or MemoryAccess()
    keys.on_revoke = key_cache.forget  # as the Postgres store's LISTEN tells every replica
    key_cache.set_live(True)
    bus = MemoryEventBus()

    async def no_heartbeats() -> list[dict[str, Any]]:
        return []

    store = store or MemoryJobStore()
    return Orchestrator(cfg, Ports(
        store=store, events=bus, webhooks=MemoryWebhookQueue(store), backends=dict(backends), metrics=MemoryMetrics(),
        cluster=StaticCluster(list(backends)), heartbeats=no_heartbeats, owner=f"memory:{uuid.uuid4().hex[:8]}",
        board=MemoryDecisionBoard() if cfg.arbiter.enabled else None, keys=keys, key_cache=key_cache,
        artifacts=artifacts, cloud=build_cloud(cfg, artifacts, dict(cloud_providers or {})),
    ))
