"""Authentication: a bearer token to a `Caller` (core/keys.py), the same for HTTP routes and Python
handle methods. Keys come from Postgres (a primary-key lookup) through a KeyCache: a key is read
once a minute at most while the cache hears revokes (a revoke notifies every router replica in its
own transaction), and on every call while it does not. The token itself is never logged or stored."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Callable, Iterable, Protocol

from gpu_orchestrator.core.keys import OPEN, ApiKey, AuthError, Caller, Quota, Scope, secret_matches, split_token

log = logging.getLogger("gpu_orchestrator.auth")

MISSING = "an API key is required: send `Authorization: Bearer <key>` (create one with `gpu-orch keys create`)"
INVALID = "invalid or revoked API key"
# An open stack needs no key, but one that is sent must be one of its keys: a typo or a key for
# another service fails here, as it will when the stack requires keys.
# The token that says "no key" where a client must send one (the openai client does): accepted
# as the anonymous caller on an open stack only.
ANONYMOUS_TOKEN = "anonymous"
NOT_OURS_OPEN = (f"not an API key of this stack; it needs none: send no Authorization header, or the token "
                 f"{ANONYMOUS_TOKEN!r} where a client must send one (the openai client: api_key={ANONYMOUS_TOKEN!r})")


class KeyLookup(Protocol):
    """What a request's check needs: store/access.py's PostgresAccess, store/memory_access.py's
    MemoryAccess."""

    def key_for(self, key_id: str) -> tuple[ApiKey, str] | None: ...
    def artifact_owners(self, uri: str) -> set[str]: ...
    def grant_artifact(self, uri: str, owner: str) -> None: ...


class KeyAdmin(KeyLookup, Protocol):
    """What the admin routes need besides."""

    def create_key(self, *, name: str, scopes: Iterable[Scope], apps: Iterable[str] | None = None,
                   quota: Quota = Quota()) -> tuple[ApiKey, str]: ...
    def keys(self, *, revoked: bool = False) -> list[ApiKey]: ...
    def revoke_key(self, id_or_name: str) -> ApiKey: ...


class NoKeyStore(Exception):
    """503: this router was built without a key store (an open stack with no keys)."""


class KeyCache:
    """Live keys by id, kept `ttl_s` at most and only while `live` (told revokes as they happen:
    `forget(key_id)`). Not live, every lookup reads the store, as without a cache. Unknown or
    revoked keys are never cached (a new key works at once). Thread-safe: forget and set_live come
    from the listener's thread."""

    def __init__(self, ttl_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.ttl_s, self.clock = ttl_s, clock
        self._keys: dict[str, tuple[float, tuple[ApiKey, str]]] = {}
        self._gen = 0  # bumped by every forget: a lookup that raced a revoke does not store its answer
        self._live = False
        self._mutex = threading.Lock()

    def set_live(self, live: bool) -> None:
        with self._mutex:
            self._live = live
            self._keys.clear()
            self._gen += 1

    def forget(self, key_id: str) -> None:
        with self._mutex:
            self._keys.pop(key_id, None)
            self._gen += 1

    def get(self, key_id: str) -> tuple[int, tuple[ApiKey, str] | None]:
        """(generation, the cached key or None)."""
        with self._mutex:
            hit = self._keys.get(key_id)
            if hit is not None and (not self._live or self.clock() - hit[0] > self.ttl_s):
                del self._keys[key_id]
                hit = None
            return self._gen, hit[1] if hit is not None else None

    def put(self, key_id: str, gen: int, found: tuple[ApiKey, str]) -> None:
        with self._mutex:
            if self._live and gen == self._gen:
                self._keys[key_id] = (self.clock(), found)


class Auth:
    """`required`: every call needs a key (the stack listens beyond loopback). Off, a call without a
    key is the anonymous OPEN caller; a key that is sent is still checked (an unknown or revoked one
    is a 401; a valid one's scopes, quota and jobs hold), so a client's mistakes show before the
    stack is exposed."""

    def __init__(self, keys: KeyLookup | None, *, required: bool, cache: KeyCache | None = None):
        if required and keys is None:
            raise ValueError("auth is required but no key store is configured")
        self.keys = keys
        self.required = required
        self.cache = cache

    async def caller(self, token: str | None) -> Caller:
        if token is None:
            if self.required:
                raise AuthError(MISSING)
            return OPEN
        if token == ANONYMOUS_TOKEN and not self.required:
            return OPEN
        parts = split_token(token)
        if parts is None or self.keys is None:
            raise AuthError(INVALID if self.required else NOT_OURS_OPEN)
        key_id, secret = parts
        found = await self._key(key_id)
        if found is None or not secret_matches(secret, found[1]):
            log.info("refused API key id %s", key_id)  # the id only: never the secret
            raise AuthError(INVALID)
        return Caller.of(found[0])

    async def _key(self, key_id: str) -> tuple[ApiKey, str] | None:
        assert self.keys is not None
        if self.cache is None:
            return await asyncio.to_thread(self.keys.key_for, key_id)
        gen, found = self.cache.get(key_id)
        if found is None:
            found = await asyncio.to_thread(self.keys.key_for, key_id)
            if found is not None:
                self.cache.put(key_id, gen, found)
        return found

    # -- the admin routes' key management ------------------------------------------------------

    def _admin(self) -> KeyAdmin:
        if self.keys is None:
            raise NoKeyStore("this router has no key store")
        return self.keys  # type: ignore[return-value]

    async def list_keys(self, *, revoked: bool = False) -> list[ApiKey]:
        return await asyncio.to_thread(self._admin().keys, revoked=revoked)

    async def create_key(self, *, name: str, scopes: Iterable[Scope], apps: Iterable[str] | None,
                         quota: Quota) -> tuple[ApiKey, str]:
        """(the key, its token: shown once). KeyExists when a live key has the name."""
        return await asyncio.to_thread(self._admin().create_key, name=name, scopes=scopes, apps=apps, quota=quota)

    async def revoke_key(self, id_or_name: str) -> ApiKey:
        """Revoked at once here; other replicas hear it from the store (KeyNotFound: no live key)."""
        key = await asyncio.to_thread(self._admin().revoke_key, id_or_name)
        if self.cache is not None:  # before the revoke's notification comes back; other replicas hear that
            self.cache.forget(key.id)
        return key

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
