"""Authentication: a bearer token to a `Caller` (core/keys.py), the same for HTTP routes and Python
handle methods. Keys are read from Postgres on every call (a primary-key lookup), so a revoke
holds at once on every router replica. The token itself is never logged or stored."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from gpu_orchestrator.core.keys import OPEN, ApiKey, AuthError, Caller, secret_matches, split_token

log = logging.getLogger("gpu_orchestrator.auth")

MISSING = "an API key is required: send `Authorization: Bearer <key>` (create one with `gpu-orch keys create`)"
INVALID = "invalid or revoked API key"


class KeyLookup(Protocol):
    """store.access.PostgresAccess (also create_key, keys, revoke_key for the admin routes)."""

    def key_for(self, key_id: str) -> tuple[ApiKey, str] | None: ...
    def artifact_owners(self, uri: str) -> set[str]: ...
    def grant_artifact(self, uri: str, owner: str) -> None: ...


class Auth:
    """`required`: every call needs a key (the stack listens beyond loopback). Off, a call without
    one of our keys is the anonymous OPEN caller; one with a key is still checked (its scopes, its
    quota, its jobs), so a client's mistakes show before the stack is exposed."""

    def __init__(self, keys: KeyLookup | None, *, required: bool):
        if required and keys is None:
            raise ValueError("auth is required but no key store is configured")
        self.keys = keys
        self.required = required

    async def caller(self, token: str | None) -> Caller:
        if token is None:
            if self.required:
                raise AuthError(MISSING)
            return OPEN
        parts = split_token(token)
        if parts is None and not self.required:
            return OPEN  # an open stack ignores what is not one of its keys (the openai client must send one)
        if parts is None or self.keys is None:
            raise AuthError(INVALID)
        key_id, secret = parts
        found = await asyncio.to_thread(self.keys.key_for, key_id)
        if found is None or not secret_matches(secret, found[1]):
            log.info("refused API key id %s", key_id)  # the id only: never the secret
            raise AuthError(INVALID)
        return Caller.of(found[0])

    async def may_read_artifact(self, caller: Caller, uri: str) -> bool:
        """Uploads: the key that uploaded them. Results: the owner of the job that made them.
        Callers with read:all (and the open caller) read any."""
        if caller.sees_all:
            return True
        if self.keys is None:
            return False
        return caller.key_id in await asyncio.to_thread(self.keys.artifact_owners, uri)

    async def uploaded(self, caller: Caller, uri: str) -> None:
        if caller.key_id is not None and self.keys is not None:
            await asyncio.to_thread(self.keys.grant_artifact, uri, caller.key_id)


OPEN_AUTH = Auth(None, required=False)
