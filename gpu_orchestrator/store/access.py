"""API keys and artifact ownership in Postgres (tables from migration 0005). A revoke notifies
KEYS_CHANNEL in its transaction, so every router's key cache (service/auth.py's KeyCache, fed by
store/pg_listen.py) forgets the key the moment the revoke commits."""

from __future__ import annotations

from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from gpu_orchestrator.core.keys import ApiKey, KeyExists, KeyNotFound, Quota, Scope, new_token

__all__ = ["KEYS_CHANNEL", "KeyExists", "KeyNotFound", "PostgresAccess"]


KEYS_CHANNEL = "gpu_orch_keys"  # NOTIFY channel: the id of each key revoked
_KEY_COLS = "id, name, scopes, apps, quota_jobs_per_min, max_queued, created_at, revoked_at"


def _key(row: Any) -> ApiKey:
    return ApiKey(id=row.id, name=row.name, scopes=frozenset(Scope(s) for s in row.scopes),
                  apps=frozenset(row.apps) if row.apps is not None else None,
                  quota=Quota(row.quota_jobs_per_min, row.max_queued), created_at=row.created_at,
                  revoked_at=row.revoked_at)


class PostgresAccess:
    def __init__(self, engine: Engine):
        self.engine = engine

    # -- keys -------------------------------------------------------------------------------------

    def create_key(self, *, name: str, scopes: Iterable[Scope], apps: Iterable[str] | None = None,
                   quota: Quota = Quota()) -> tuple[ApiKey, str]:
        """(the key, its token): the token exists only in this return value."""
        token, key_id, secret_hash = new_token()
        try:
            with self.engine.begin() as conn:
                row = conn.execute(sa.text(
                    f"INSERT INTO api_keys (id, name, secret_hash, scopes, apps, quota_jobs_per_min, max_queued) "
                    f"VALUES (:id, :name, :h, :scopes, :apps, :rate, :queued) RETURNING {_KEY_COLS}"),
                    {"id": key_id, "name": name, "h": secret_hash, "scopes": sorted(s.value for s in scopes),
                     "apps": sorted(apps) if apps is not None else None, "rate": quota.jobs_per_min,
                     "queued": quota.max_queued}).one()
        except sa.exc.IntegrityError:
            raise KeyExists.named(name) from None
        return _key(row), token

    def keys(self, *, revoked: bool = False) -> list[ApiKey]:
        where = "" if revoked else " WHERE revoked_at IS NULL"
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT {_KEY_COLS} FROM api_keys{where} ORDER BY created_at, id")).all()
        return [_key(r) for r in rows]

    def revoke_key(self, id_or_name: str) -> ApiKey:
        """Revoke the live key with this id or name (the id wins if both match different keys)."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.text(
                f"UPDATE api_keys SET revoked_at = now() WHERE id = (SELECT id FROM api_keys WHERE revoked_at IS NULL "
                f"AND (id = :k OR name = :k) ORDER BY (id = :k) DESC LIMIT 1) RETURNING {_KEY_COLS}"),
                {"k": id_or_name}).first()
            if row is not None:  # delivered at commit to every router's key cache (store/pg_listen.py)
                conn.execute(sa.text("SELECT pg_notify(:ch, :id)"), {"ch": KEYS_CHANNEL, "id": row.id})
        if row is None:
            raise KeyNotFound.of(id_or_name)
        return _key(row)

    def key_for(self, key_id: str) -> tuple[ApiKey, str] | None:
        """A live key and its secret hash, by id (None: unknown or revoked)."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.text(f"SELECT {_KEY_COLS}, secret_hash FROM api_keys WHERE id = :id "
                                       f"AND revoked_at IS NULL"), {"id": key_id}).first()
        return (_key(row), row.secret_hash) if row is not None else None

    def has_keys(self) -> bool:
        with self.engine.connect() as conn:
            return bool(conn.execute(sa.text("SELECT EXISTS (SELECT 1 FROM api_keys)")).scalar())

    # -- artifacts --------------------------------------------------------------------------------

    def grant_artifact(self, uri: str, owner: str) -> None:
        """The key that uploaded a file may read it back (a job's results are granted by complete())."""
        with self.engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO artifact_owners (uri, owner) VALUES (:u, :o) ON CONFLICT DO NOTHING"),
                         {"u": uri, "o": owner})

    def artifact_owners(self, uri: str) -> set[str]:
        with self.engine.connect() as conn:
            return {r.owner for r in conn.execute(sa.text("SELECT owner FROM artifact_owners WHERE uri = :u"), {"u": uri})}
