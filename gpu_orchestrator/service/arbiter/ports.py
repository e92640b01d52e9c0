"""What the arbiter loop needs from the world, as small protocols: the cluster (Serve replica states
and Ray nodes: serve.cluster.RayClusterView), model heartbeats (bus.workers.WorkerBeats), the queue
(store.base.JobStore has these two reads), and metrics (serve.metrics implements ArbiterMetrics with
ray.serve.metrics). Unit tests pass fakes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

from gpu_orchestrator.store.base import AppQueueStats


@dataclass(frozen=True)
class Node:
    """An alive cluster node and its resources (GPU, vram_gb, node_type:<t> ...)."""

    node_id: str
    resources: Mapping[str, float] = field(default_factory=dict)


class ClusterView(Protocol):
    """The cluster as the arbiter sees it. Blocking calls: the loop runs them in a thread."""

    def replica_states(self) -> dict[str, dict[str, int]]:
        """Per model deployment of this application: replica counts by state (RUNNING, STARTING,
        UPDATING, STOPPING, ...)."""
        ...

    def nodes(self) -> list[Node]:
        """The alive nodes."""
        ...


class Heartbeats(Protocol):
    """Model replicas' latest heartbeats (dicts with deployment, node_id, last_used, ...)."""

    async def read_all(self) -> list[dict[str, Any]]: ...


class QueueReader(Protocol):
    """The two store reads the leader needs (a JobStore has both). Blocking: run in a thread."""

    def queue_stats(self) -> dict[str, AppQueueStats]: ...
    def service_times(self, *, window_s: float = 3600.0) -> dict[str, float]: ...


class ArbiterMetrics(Protocol):
    def loaded(self, model: str, warm: bool = False) -> None:
        """The arbiter scaled a model up from zero (a swap in); `warm`: a parked replica wakes."""
        ...

    def evicted(self, model: str) -> None:
        """The arbiter scaled a model down to zero (a swap out or an idle-TTL release)."""
        ...

    def load_seconds(self, model: str, seconds: float, warm: bool = False) -> None:
        """Measured time from the load decision to a running replica (`warm`: to the woken one)."""
        ...


class NoArbiterMetrics:
    def loaded(self, model: str, warm: bool = False) -> None:
        pass

    def evicted(self, model: str) -> None:
        pass

    def load_seconds(self, model: str, seconds: float, warm: bool = False) -> None:
        pass


class CountingArbiterMetrics:
    """In-process counts (tests)."""

    def __init__(self) -> None:
        self.loads: Counter[str] = Counter()
        self.evictions: Counter[str] = Counter()
        self.load_times: dict[str, list[float]] = {}
        self.warm_loads: Counter[str] = Counter()
        self.warm_times: dict[str, list[float]] = {}

    def loaded(self, model: str, warm: bool = False) -> None:
        self.loads[model] += 1
        self.warm_loads[model] += warm

    def evicted(self, model: str) -> None:
        self.evictions[model] += 1

    def load_seconds(self, model: str, seconds: float, warm: bool = False) -> None:
        (self.warm_times if warm else self.load_times).setdefault(model, []).append(seconds)
