"""The orchestrator over Postgres and Redis: the job store, its key table and webhook queue, the
event bus, the replicas' heartbeats and the arbiter's decision board, with the LISTENs that keep
every replica's key cache and webhook sender current. What runs the models, counts the metrics and
sees the cluster comes from the caller: serve/router.py passes Ray Serve's (handles, Ray metrics,
Serve's replica states); tests pass their own, with no Ray at all."""

from __future__ import annotations

from typing import Any, Mapping

from gpu_orchestrator.bus.decisions import RedisDecisionBoard
from gpu_orchestrator.bus.events import AsyncEventBus
from gpu_orchestrator.bus.workers import WorkerBeats
from gpu_orchestrator.core.config import OrchestratorConfig
from gpu_orchestrator.root.orchestrator import Orchestrator, Ports
from gpu_orchestrator.service.arbiter.ports import ClusterView
from gpu_orchestrator.service.auth import KeyCache
from gpu_orchestrator.service.backends import ModelBackend
from gpu_orchestrator.service.cloud.backend import build_cloud
from gpu_orchestrator.store.access import KEYS_CHANNEL, PostgresAccess
from gpu_orchestrator.store.artifacts import ArtifactStore
from gpu_orchestrator.store.pg_webhooks import CHANNEL as WEBHOOK_CHANNEL
from gpu_orchestrator.store.pg_webhooks import PgWebhookQueue
from gpu_orchestrator.store.postgres import PostgresJobStore


def on_postgres(cfg: OrchestratorConfig, backends: Mapping[str, ModelBackend], *, database_url: str, redis_url: str,
                metrics: Any, cluster: ClusterView, owner: str, board_name: str, artifacts_url: str | None = None,
                cloud_providers: Mapping[str, Any] | None = None) -> Orchestrator:
    """`backends` by model deployment name (what is not there cannot run: its apps are refused);
    `board_name`: whose arbiter decisions these are (the Serve application's name);
    `cloud_providers` replace the real Modal and Replicate clients (tests' fakes)."""
    rc = cfg.router
    artifacts = ArtifactStore(artifacts_url) if artifacts_url else None
    store = PostgresJobStore.connect(database_url, prepared_statements=rc.prepared_statements)
    # A slow Redis costs a request at most this long (then it is treated as down for a moment).
    bus = AsyncEventBus(redis_url, timeout_s=rc.redis_timeout_s)
    # Keys cached while a LISTEN hears every revoke (on any replica, or the CLI) the moment it commits.
    key_cache = KeyCache()
    store.listen(KEYS_CHANNEL, key_cache.forget, key_cache.set_live)
    orch = Orchestrator(cfg, Ports(
        store=store, events=bus, backends=dict(backends), metrics=metrics, cluster=cluster,
        heartbeats=WorkerBeats(bus.r).read_all, owner=owner,
        board=RedisDecisionBoard(bus.r, board_name) if cfg.arbiter.enabled else None,
        keys=PostgresAccess(store.engine), key_cache=key_cache, artifacts=artifacts,
        cloud=build_cloud(cfg, artifacts, dict(cloud_providers) if cloud_providers else None),
        webhooks=PgWebhookQueue(store.engine),
    ))
    # A delivery falling due (the status trigger's NOTIFY) wakes this replica's sender at once.
    sender = orch.webhooks
    store.listen(WEBHOOK_CHANNEL, lambda _: sender.poke() if sender is not None else None, lambda _live: None)
    return orch
