"""The arbiter's decision, shared by every router replica: the leader publishes a Snapshot, the
others read it. In Redis with a short TTL, so a dead leader's decision expires; followers also treat
a snapshot older than a few seconds as stale (ArbiterLoop). MemoryDecisionBoard for tests.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:  # the loop that uses a board must not import redis
    import redis.asyncio as aredis

TTL_S = 30


@dataclass
class Snapshot:
    """The decision every router replica acts on (published by the leader)."""

    ts: float
    leader: str
    targets: dict[str, int]
    dispatchable: list[str]
    draining: list[str]
    reasons: list[str]
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # per model, as GET /v1/workers shows it
    unplaceable: dict[str, str] = field(default_factory=dict)
    swap_credit_s: dict[str, float] = field(default_factory=dict)  # per GPU pool: what the swap budget still allows
    history: list[list] = field(default_factory=list)  # the leader's latest actions, [ts, text], oldest first
    # Per GPU pool: {"vram_gb": its budget, "held_gb": the packed VRAM of every replica on it
    # (resident, loading, stopping), "virtual": true for the demo's}, as the policy counted it.
    gpus: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The warm tier: models kept parked (their replica stays up for Serve, holding no VRAM), and per
    # node {"budget_gb", "held_gb", "free_gb", "room_gb"} of host memory.
    parked: list[str] = field(default_factory=list)
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> str:
        # Its fields are plain JSON values: no deep copy (asdict's) of a thousand models' rows.
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_json(cls, raw: str | bytes) -> Snapshot:
        # Fields a newer leader added are dropped, so replicas of two versions can share the board.
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(raw).items() if k in known})


class DecisionBoard(Protocol):
    async def publish(self, snapshot: Snapshot) -> None: ...
    async def read(self) -> Snapshot | None: ...
    # Each model's latest measured load time, kept beyond one leader's term (no TTL): the next
    # leader, or one after a restart of every router, starts from it instead of the declared figure.
    async def remember_load(self, model: str, seconds: float) -> None: ...
    async def loads(self) -> dict[str, float]: ...


def board_key(app_name: str) -> str:
    return f"gpu-orch:arbiter:{app_name}:decision"


def loads_key(app_name: str) -> str:
    return f"gpu-orch:arbiter:{app_name}:load_s"


class RedisDecisionBoard:
    def __init__(self, r: aredis.Redis, app_name: str, ttl_s: int = TTL_S):
        self.r = r
        self.key = board_key(app_name)
        self.loads_key = loads_key(app_name)
        self.ttl_s = ttl_s

    async def publish(self, snapshot: Snapshot) -> None:
        await self.r.set(self.key, snapshot.to_json(), ex=self.ttl_s)

    async def read(self) -> Snapshot | None:
        raw = await self.r.get(self.key)
        return Snapshot.from_json(raw) if raw else None

    async def remember_load(self, model: str, seconds: float) -> None:
        await self.r.hset(self.loads_key, model, repr(float(seconds)))

    async def loads(self) -> dict[str, float]:
        raw = await self.r.hgetall(self.loads_key)
        return {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in raw.items()}


class MemoryDecisionBoard:
    """One board shared by the loops of a test; stores the JSON, as Redis would, with the TTL."""

    def __init__(self, ttl_s: float = TTL_S, clock: Callable[[], float] = time.time):
        self.ttl_s = ttl_s
        self.clock = clock
        self._raw: str | None = None
        self._at = 0.0
        self.publishes = 0
        self._loads: dict[str, float] = {}

    async def publish(self, snapshot: Snapshot) -> None:
        self._raw, self._at = snapshot.to_json(), self.clock()
        self.publishes += 1

    async def read(self) -> Snapshot | None:
        if self._raw is None or self.clock() - self._at >= self.ttl_s:
            return None
        return Snapshot.from_json(self._raw)

    async def remember_load(self, model: str, seconds: float) -> None:
        self._loads[model] = float(seconds)

    async def loads(self) -> dict[str, float]:
        return dict(self._loads)
