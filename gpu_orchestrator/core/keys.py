"""API keys: the token format, scopes, and what a caller may do. Pure: the store keeps keys (hashed),
the API and the handle methods turn a token into a `Caller` and ask it.

A token is `go_<id>_<secret>`: the id (public, also the jobs' `owner`) finds the row, the secret is
checked against its SHA-256 (a random 256-bit secret needs no slow hash: nothing to brute-force)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import hmac
import re
import secrets
from typing import Iterable

TOKEN_PREFIX = "go_"
_TOKEN_RE = re.compile(r"go_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


class Scope(str, enum.Enum):
    submit = "submit"  # submit jobs (to the key's apps), upload files
    read = "read"  # its own jobs: get, list, events, artifacts
    read_all = "read:all"  # everyone's jobs, read only
    cancel = "cancel"  # its own jobs
    admin = "admin"  # keys, workers, costs, retention, everyone's jobs (read and cancel): implies the rest


class AuthError(Exception):
    """401: no key, a malformed or unknown one, or a revoked one. Never says which (no oracle)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __reduce__(self):
        return type(self), (self.message,), self.__dict__


class Forbidden(Exception):
    """403: a valid key without the scope (or the app) the request needs."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def __reduce__(self):
        return type(self), (self.message, self.field), self.__dict__


class KeyNotFound(Exception):
    """404: no live key with that id or name (revoking)."""

    @classmethod
    def of(cls, id_or_name: str) -> "KeyNotFound":
        return cls(f"no live key with id or name {id_or_name!r}")


class KeyExists(Exception):
    """409: a live key already has that name."""

    @classmethod
    def named(cls, name: str) -> "KeyExists":
        return cls(f"a live key named {name!r} exists; revoke it first or pick another name")


class QuotaExceeded(Exception):
    """429 + Retry-After: the key's jobs-per-minute or queued-jobs quota is used up."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s

    def __reduce__(self):
        return type(self), (self.message, self.retry_after_s), self.__dict__


def parse_scopes(items: Iterable[str]) -> frozenset[Scope]:
    out = set()
    for raw in items:
        s = raw.strip()
        if not s:
            continue
        try:
            out.add(Scope(s))
        except ValueError:
            raise ValueError(f"unknown scope {s!r} (scopes: {', '.join(x.value for x in Scope)})") from None
    if not out:
        raise ValueError(f"at least one scope is needed (scopes: {', '.join(x.value for x in Scope)})")
    return frozenset(out)


def name_problem(name: str) -> str | None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        return "must be 1-64 characters: letters, digits, . _ @ - (starting with a letter or digit)"
    return None


@dataclasses.dataclass(frozen=True)
class Quota:
    jobs_per_min: int | None = None  # jobs submitted in any 60 s
    max_queued: int | None = None  # jobs queued or running at once

    def __bool__(self) -> bool:
        return self.jobs_per_min is not None or self.max_queued is not None


@dataclasses.dataclass(frozen=True)
class ApiKey:
    """A key as stored (no secret): what `gpu-orch keys list` shows."""

    id: str
    name: str
    scopes: frozenset[Scope]
    apps: frozenset[str] | None  # None: every app
    quota: Quota
    created_at: dt.datetime | None = None
    revoked_at: dt.datetime | None = None

    def to_api(self) -> dict:
        return {"id": self.id, "name": self.name, "scopes": sorted(s.value for s in self.scopes),
                "apps": sorted(self.apps) if self.apps is not None else None,
                "quota_jobs_per_min": self.quota.jobs_per_min, "max_queued": self.quota.max_queued,
                "created_at": self.created_at.isoformat() if self.created_at else None,
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None}


def new_token() -> tuple[str, str, str]:
    """(token, key id, secret hash): the token is shown once; the id and the hash are stored."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return f"{TOKEN_PREFIX}{key_id}_{secret}", key_id, hash_secret(secret)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_token(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed token, else None."""
    m = _TOKEN_RE.fullmatch(token.strip()) if isinstance(token, str) else None
    return (m.group(1), m.group(2)) if m else None


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (the openai client sends this form)."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who is asking. `key_id` None: the open stack's anonymous caller, who may do everything."""

    key_id: str | None
    name: str
    scopes: frozenset[Scope]
    apps: frozenset[str] | None = None
    quota: Quota = Quota()

    @classmethod
    def of(cls, key: ApiKey) -> "Caller":
        return cls(key_id=key.id, name=key.name, scopes=key.scopes, apps=key.apps, quota=key.quota)

    def has(self, scope: Scope) -> bool:
        if Scope.admin in self.scopes or scope in self.scopes:
            return True
        return scope == Scope.read and Scope.read_all in self.scopes

    def require(self, scope: Scope) -> None:
        if not self.has(scope):
            raise Forbidden(f"this key ({self.name}) lacks the {scope.value!r} scope "
                            f"(it has: {', '.join(sorted(s.value for s in self.scopes))})")

    def require_app(self, app_id: str, field: str = "app_id") -> None:
        """Submit to one of the key's apps only (refused as 403 naming the field)."""
        self.require(Scope.submit)
        if self.apps is not None and app_id not in self.apps:
            raise Forbidden(f"this key ({self.name}) may submit to {', '.join(sorted(self.apps)) or 'no app'} "
                            f"only, not {app_id[:64]!r}", field=field)

    @property
    def sees_all(self) -> bool:
        """Everyone's jobs and artifacts (read:all, admin, or the open stack's anonymous caller)."""
        return self.key_id is None or self.has(Scope.read_all)

    def sees(self, owner: str | None) -> bool:
        """Whether a job (or artifact) owned by `owner` exists for this caller: other callers get a
        404 for it, so ids don't leak."""
        return self.sees_all or (owner is not None and owner == self.key_id)

    def may_cancel(self, owner: str | None) -> bool:
        """A visible job: its owner with `cancel`, or an admin."""
        if self.key_id is None or Scope.admin in self.scopes:
            return True
        return owner == self.key_id and Scope.cancel in self.scopes

    @property
    def owner(self) -> str | None:
        """What a job this caller submits records as its owner."""
        return self.key_id


OPEN = Caller(key_id=None, name="open", scopes=frozenset(Scope))


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def auth_required(mode: str, http_host: str | None) -> bool:
    """router.auth `auto`: required unless the HTTP proxy listens on loopback only (an unknown
    host counts as exposed)."""
    if mode in ("on", "off"):
        return mode == "on"
    return http_host is None or http_host.strip("[]") not in LOOPBACK and not http_host.startswith("127.")


def rate_retry_after(oldest_in_window_age_s: float, window_s: float = 60.0) -> int:
    """Seconds until the oldest job in the window leaves it (at least 1)."""
    return max(1, int(window_s - oldest_in_window_age_s + 0.999))


QUEUED_RETRY_AFTER_S = 5  # a queued-jobs quota frees up as jobs end: no time can be told


def check_quota(quota: Quota, *, recent: int, oldest_recent_age_s: float | None, active: int) -> None:
    """QuotaExceeded when a new job would break the key's quota, given its jobs submitted in the last
    60 s (and how old the oldest of them is) and its jobs queued or running now. Both stores count;
    this decides and words the 429."""
    if quota.jobs_per_min is not None and recent >= quota.jobs_per_min:
        raise QuotaExceeded(f"rate limit: this key may submit {quota.jobs_per_min} jobs per minute",
                            rate_retry_after(oldest_recent_age_s or 0.0))
    if quota.max_queued is not None and active >= quota.max_queued:
        raise QuotaExceeded(f"quota: this key may have {quota.max_queued} jobs queued or running at once "
                            f"({active} now)", QUEUED_RETRY_AFTER_S)
