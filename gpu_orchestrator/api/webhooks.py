"""GET /v1/webhooks/default/secret: the secret that signs the caller's webhooks (Replicate's route),
to check a delivery's `webhook-signature` (core/webhooks.py `verify`)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from gpu_orchestrator.api.deps import CallerDep
from gpu_orchestrator.api.errors import ApiError

router = APIRouter(tags=["webhooks"])


@router.get("/v1/webhooks/default/secret")
async def secret(request: Request, caller: CallerDep) -> dict[str, Any]:
    """The signing secret of this key's webhooks (an open stack's anonymous caller has one too)."""
    sender = request.app.state.webhooks
    if sender is None:
        raise ApiError(503, "no_webhooks", "this router sends no webhooks")
    return {"key": await asyncio.to_thread(sender.queue.secret, caller.owner or "")}
