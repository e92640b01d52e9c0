"""API keys and artifact ownership in memory: store/access.py's twin, with the same contract
(tests/integration/test_access.py runs both). A revoke calls `on_revoke(key_id)`, as the Postgres
one notifies every router's key cache."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from typing import Callable, Iterable

from gpu_orchestrator.core.keys import ApiKey, KeyExists, KeyNotFound, Quota, Scope, new_token


class MemoryAccess:
    def __init__(self, on_revoke: Callable[[str], None] | None = None):
        self.on_revoke = on_revoke
        self._keys: dict[str, tuple[ApiKey, str]] = {}  # id -> (key, secret hash), in creation order
        self._owners: dict[str, set[str]] = {}
        self._mutex = threading.Lock()

    def create_key(self, *, name: str, scopes: Iterable[Scope], apps: Iterable[str] | None = None,
                   quota: Quota = Quota()) -> tuple[ApiKey, str]:
        token, key_id, secret_hash = new_token()
        with self._mutex:
            if any(k.name == name and k.revoked_at is None for k, _ in self._keys.values()):
                raise KeyExists.named(name)
            key = ApiKey(id=key_id, name=name, scopes=frozenset(scopes),
                         apps=frozenset(apps) if apps is not None else None, quota=quota,
                         created_at=dt.datetime.now(dt.timezone.utc))
            self._keys[key_id] = (key, secret_hash)
        return key, token

    def keys(self, *, revoked: bool = False) -> list[ApiKey]:
        with self._mutex:
            return [k for k, _ in self._keys.values() if revoked or k.revoked_at is None]

    def revoke_key(self, id_or_name: str) -> ApiKey:
        with self._mutex:
            live = [k for k, _ in self._keys.values() if k.revoked_at is None]
            key = next((k for k in live if k.id == id_or_name), None) or next(
                (k for k in live if k.name == id_or_name), None)  # the id wins, as in Postgres
            if key is None:
                raise KeyNotFound.of(id_or_name)
            key = dataclasses.replace(key, revoked_at=dt.datetime.now(dt.timezone.utc))
            self._keys[key.id] = (key, self._keys[key.id][1])
        if self.on_revoke is not None:
            self.on_revoke(key.id)
        return key

    def key_for(self, key_id: str) -> tuple[ApiKey, str] | None:
        with self._mutex:
            found = self._keys.get(key_id)
        return found if found is not None and found[0].revoked_at is None else None

    def has_keys(self) -> bool:
        with self._mutex:
            return bool(self._keys)

    def grant_artifact(self, uri: str, owner: str) -> None:
        with self._mutex:
            self._owners.setdefault(uri, set()).add(owner)

    def artifact_owners(self, uri: str) -> set[str]:
        with self._mutex:
            return set(self._owners.get(uri, ()))
