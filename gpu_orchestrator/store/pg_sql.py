"""The job store's SQL, named: the columns a Job is read from, the inserts, the cost and error-history
fragments, the advisory lock keys. Text only, with :name parameters: store/pg_intake.py, pg_leases.py and
pg_reports.py run them through SQLAlchemy, store/pg_async.py through asyncpg (numbered: `numbered`)."""

from __future__ import annotations

import functools
import json
import re
import uuid
from typing import Any

import sqlalchemy as sa

from gpu_orchestrator.store.base import MAX_ERRORS, Cost, StartNow

COLS = (
    "id, app_id, status, priority, params, result, error, attempts, max_attempts, timeout_s, backend, "
    "idempotency_key, lease_owner, lease_expires_at, created_at, started_at, finished_at, "
    "claims, lost_attempts, errors, dispatched_at, run_after, route, route_reason, cloud_ref, gpu_seconds, "
    "cost_usd, usage, owner, webhook, webhook_events, webhook_pending, webhook_state"
)
PRUNE_LOCK = 0x6770757072  # "gpupr": one retention pruner at a time


# A run's cost adds to what earlier attempts of the job cost (a failed cloud run is billed too).
COST_SET = ("gpu_seconds = CASE WHEN CAST(:gs AS float8) IS NULL THEN gpu_seconds ELSE coalesce(gpu_seconds, 0) + :gs END, "
             "cost_usd = CASE WHEN CAST(:usd AS float8) IS NULL THEN cost_usd ELSE coalesce(cost_usd, 0) + :usd END, "
             "usage = coalesce(CAST(:usage AS jsonb), usage)")


INSERT_COLS = ("id, app_id, status, priority, params, max_attempts, timeout_s, idempotency_key, request_hash, route, "
                "route_reason, owner")
INSERT_VALUES = (":id, :app_id, {status}, :priority, CAST(:params AS jsonb), :max_attempts, :timeout_s, :key, :hash, "
                  ":route, :reason, :owner")
QUEUED, RUNNING_IF_OK = "'queued'", "CASE WHEN go.ok THEN 'running' ELSE 'queued' END"
INSERT_QUEUED = (f"INSERT INTO jobs ({INSERT_COLS}) VALUES ({INSERT_VALUES.format(status=QUEUED)}) "
                  f"ON CONFLICT (app_id, idempotency_key) DO NOTHING RETURNING {COLS}")
# Started at once when no claimable job of the app (on this route) waits and a slot is free: running,
# attempt 1, leased and dispatched (the accepting router hands it to its model in the same breath).
# One statement, one round trip: it takes the claim's own lock first (`held`), then asks
# jobs_start_ok() (migration 0007), whose queries take a fresh snapshot after the lock: it sees
# every claim and start committed meanwhile, so the in-flight bound stays exact.
INSERT_STARTED = (
    "WITH held AS MATERIALIZED (SELECT pg_advisory_xact_lock(hashtext(:k))), "
    "go AS MATERIALIZED (SELECT jobs_start_ok(:app_id, :route, :cap) AS ok FROM held) "
    f"INSERT INTO jobs ({INSERT_COLS}, attempts, claims, lease_owner, lease_expires_at, started_at, dispatched_at) "
    f"SELECT {INSERT_VALUES.format(status=RUNNING_IF_OK)}, "
    f"go.ok::int, go.ok::int, CASE WHEN go.ok THEN :lease_owner END, "
    f"CASE WHEN go.ok THEN now() + make_interval(secs => :lease) END, "
    f"CASE WHEN go.ok THEN now() END, CASE WHEN go.ok THEN now() END FROM go "
    f"ON CONFLICT (app_id, idempotency_key) DO NOTHING RETURNING {COLS}"
)


def insert_args(*, job_id: uuid.UUID | None, app_id: str, params: dict[str, Any], priority: int, max_attempts: int,
                timeout_s: float, key: str | None, fingerprint: str | None, route: str | None, reason: str | None,
                owner: str | None, start: StartNow | None) -> dict[str, Any]:
    """The parameters of INSERT_QUEUED, or of INSERT_STARTED with `start`'s lease."""
    args: dict[str, Any] = {
        "id": job_id or uuid.uuid4(), "app_id": app_id, "priority": priority, "params": json.dumps(params),
        "max_attempts": max_attempts, "timeout_s": float(timeout_s), "key": key, "hash": fingerprint, "route": route,
        "reason": reason, "owner": owner,
    }
    if start is not None:
        args.update(lease_owner=start.owner, lease=float(start.lease_s), cap=start.max_in_flight,
                    k=claim_lock(app_id, route))
    return args


def claim_lock(app_id: str, route: str | None) -> str:
    return f"claim:{app_id}" + (f":{route}" if route else "")


def cost_args(cost: Cost | None) -> dict[str, Any]:
    if cost is None:
        return {"gs": None, "usd": None, "usage": None}
    return {"gs": cost.gpu_seconds, "usd": cost.usd, "usage": json.dumps(cost.usage, default=str)}


def append_error(kind: str, msg: str, t: str = "") -> str:
    """SQL for `errors` plus one {attempt, error, at, kind} entry; kind and msg are SQL expressions."""
    return (f"errors = (CASE WHEN jsonb_array_length({t}errors) >= {MAX_ERRORS} THEN {t}errors - 0 "
            f"ELSE {t}errors END) || jsonb_build_array(jsonb_build_object("
            f"'attempt', {t}claims, 'error', {msg}, 'at', now(), 'kind', {kind}))")


def lock_key(name: str) -> sa.TextClause:
    return sa.text(XACT_LOCK).bindparams(k=name)


GET = f"SELECT {COLS} FROM jobs WHERE id = :id"
STATUS = "SELECT status FROM jobs WHERE id = :id"
QUEUED_DEPTH = "SELECT count(*) FROM jobs WHERE app_id = :app_id AND status = 'queued'"
XACT_LOCK = "SELECT pg_advisory_xact_lock(hashtext(:k))"
COMPLETE_SET = ("status = 'succeeded', result = CAST(:result AS jsonb), backend = :backend, finished_at = now(), "
                "error = NULL, " + COST_SET)
# Results' artifacts: the job's owner may download them.
GRANT_RESULTS = ("INSERT INTO artifact_owners (uri, owner, job_id) SELECT u, :o, :j FROM unnest(CAST(:uris AS text[])) AS u "
                 "ON CONFLICT (uri, owner) DO UPDATE SET job_id = coalesce(artifact_owners.job_id, EXCLUDED.job_id)")


def leased_update(set_sql: str) -> str:
    """The guard for ending an attempt: the job is running, under this owner's lease, on this very
    attempt. A late result from an expired lease or a cancelled job matches zero rows."""
    return (f"UPDATE jobs SET {set_sql}, lease_owner = NULL, lease_expires_at = NULL "
            f"WHERE id = :id AND status = 'running' AND lease_owner = :owner AND claims = :attempt RETURNING {COLS}")


@functools.lru_cache(maxsize=None)
def numbered(sql: str) -> tuple[str, tuple[str, ...]]:
    """The statement with $1, $2 ... for asyncpg, and the parameter names in that order (a name used
    twice is one parameter). `::type` casts are left alone."""
    names: list[str] = []

    def sub(m: re.Match) -> str:
        if m.group(1) not in names:
            names.append(m.group(1))
        return f"${names.index(m.group(1)) + 1}"

    return re.sub(r"(?<![:\w]):([A-Za-z_]\w*)", sub, sql), tuple(names)

# A job's webhook, set in its insert's transaction. A job the insert started (running at once) is
# due its `start` now: the status trigger (migration 0006) sees only later changes.
SET_WEBHOOK = (
    "UPDATE jobs SET webhook = :url, webhook_events = CAST(:events AS text[]), "
    "webhook_pending = CASE WHEN status = 'running' AND 'start' = ANY(CAST(:events AS text[])) "
    "THEN ARRAY['start'] ELSE '{}' END, "
    "webhook_next_at = CASE WHEN status = 'running' AND 'start' = ANY(CAST(:events AS text[])) THEN now() END "
    f"WHERE id = :id RETURNING {COLS}"
)
