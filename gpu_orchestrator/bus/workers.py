"""Model replica heartbeats in Redis: what `GET /v1/workers` reports per replica.

Each model replica writes its info under one key with a short TTL every few seconds; a replica that
dies simply disappears when its key expires. Lossy by design (Redis carries what may be lost).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the client is passed in; nothing here needs redis at import time
    import redis
    import redis.asyncio as aredis

PREFIX = "gpu-orch:worker:"
HEARTBEAT_S = 2.0
TTL_S = 10


def worker_key(deployment: str, replica_id: str) -> str:
    return f"{PREFIX}{deployment}:{replica_id}"


def beat(r: redis.Redis, deployment: str, replica_id: str, info: dict[str, Any]) -> None:
    payload = dict(info, deployment=deployment, replica_id=replica_id, last_heartbeat=time.time())
    r.set(worker_key(deployment, replica_id), json.dumps(payload, default=str), ex=TTL_S)


async def read_all(r: aredis.Redis) -> list[dict[str, Any]]:
    keys = [k async for k in r.scan_iter(match=PREFIX + "*", count=500)]
    if not keys:
        return []
    return [json.loads(v) for v in await r.mget(keys) if v is not None]


class WorkerBeats:
    """The heartbeats as the arbiter loop reads them (service.arbiter_ports.Heartbeats)."""

    def __init__(self, r: aredis.Redis):
        self.r = r

    async def read_all(self) -> list[dict[str, Any]]:
        return await read_all(self.r)
