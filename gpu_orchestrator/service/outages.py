"""Failures of what the services stand on (Postgres, Redis), as the HTTP layer needs to tell them
apart: which exception types to watch, whether one means an outage (answer 503 and let the client
retry) or a bug (500), and a short reason for the log line (never the raw text, which can hold
hosts or credentials). The API imports this, not the drivers."""

from __future__ import annotations

import redis
from sqlalchemy import exc as sa_exc

from gpu_orchestrator.bus.events import reason
from gpu_orchestrator.store.base import StoreUnavailable
from gpu_orchestrator.store.pg_engine import is_transient_db_error

DATABASE_ERRORS: tuple[type[BaseException], ...] = (sa_exc.DBAPIError, sa_exc.TimeoutError, StoreUnavailable)
REDIS_ERRORS: tuple[type[BaseException], ...] = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
WATCHED = DATABASE_ERRORS + REDIS_ERRORS


def outage(exc: BaseException) -> str | None:
    """"database" or "redis" when `exc` means that service is unreachable, restarting or overloaded
    (the same call may work if tried again); None when it is a bug (a database error that would
    fail the same way every time)."""
    if isinstance(exc, REDIS_ERRORS):
        return "redis"
    if isinstance(exc, StoreUnavailable) or is_transient_db_error(exc):
        return "database"
    return None


__all__ = ["DATABASE_ERRORS", "REDIS_ERRORS", "WATCHED", "outage", "reason"]
