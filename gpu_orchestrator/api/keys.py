"""/v1/admin/keys: create, list and revoke API keys (admin scope; `gpu-orch keys` does the same
against the database). /v1/keys/me: what the calling key may do."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from gpu_orchestrator.api.deps import AuthDep, CallerDep, scoped
from gpu_orchestrator.api.errors import ApiError
from gpu_orchestrator.core.jobs import InvalidRequest
from gpu_orchestrator.core.keys import KeyExists, KeyNotFound, Quota, Scope, name_problem, parse_scopes

router = APIRouter(tags=["keys"])


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="who or what uses it (one live key per name)")
    scopes: list[str] = Field(description="submit, read, read:all, cancel, admin")
    apps: list[str] | None = Field(default=None, description="apps it may submit to; default: all")
    quota_jobs_per_min: int | None = Field(default=None, ge=1, le=1_000_000)
    max_queued: int | None = Field(default=None, ge=1, le=1_000_000, description="jobs queued or running at once")


@router.get("/v1/keys/me")
async def me(caller: CallerDep) -> dict[str, Any]:
    return {"id": caller.key_id, "name": caller.name, "scopes": sorted(s.value for s in caller.scopes),
            "apps": sorted(caller.apps) if caller.apps is not None else None,
            "quota_jobs_per_min": caller.quota.jobs_per_min, "max_queued": caller.quota.max_queued}


@router.get("/v1/admin/keys", dependencies=[scoped(Scope.admin)])
async def list_keys(auth: AuthDep, revoked: bool = False) -> dict[str, Any]:
    return {"keys": [k.to_api() for k in await auth.list_keys(revoked=revoked)]}


@router.post("/v1/admin/keys", status_code=201, dependencies=[scoped(Scope.admin)])
async def create_key(req: CreateKey, auth: AuthDep) -> dict[str, Any]:
    """The answer holds the key's token, once: it is stored hashed and cannot be shown again."""
    if why := name_problem(req.name):
        raise InvalidRequest("name", why)
    try:
        scopes = parse_scopes(req.scopes)
    except ValueError as e:
        raise InvalidRequest("scopes", str(e)) from None
    try:
        key, token = await auth.create_key(name=req.name, scopes=scopes, apps=req.apps,
                                           quota=Quota(req.quota_jobs_per_min, req.max_queued))
    except KeyExists as e:
        raise ApiError(409, "key_exists", str(e), field="name") from None
    return {**key.to_api(), "token": token}


@router.delete("/v1/admin/keys/{id_or_name}", dependencies=[scoped(Scope.admin)])
async def revoke_key(id_or_name: str, auth: AuthDep) -> dict[str, Any]:
    """Revoked at once: the next request with it gets a 401 on every router replica."""
    try:
        key = await auth.revoke_key(id_or_name)
    except KeyNotFound as e:
        raise ApiError(404, "key_not_found", str(e), field="id_or_name") from None
    return key.to_api()
