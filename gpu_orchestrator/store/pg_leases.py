"""Postgres job statements, a job's run under a lease: claim, the dispatch and cloud-run marks,
heartbeat, an attempt's end (complete, fail_attempt), leases that end without one (rescue_expired,
release); and the dispatcher's moves of an app's queued jobs (fail_queued, reroute_queued). Every
change is one guarded UPDATE. A mixin of PostgresJobStore (store/postgres.py)."""

from __future__ import annotations

import json
import uuid
from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from gpu_orchestrator.core.artifact_refs import artifact_uris
from gpu_orchestrator.core.jobs import Job, JobStatus, RetryPolicy, TransitionError
from gpu_orchestrator.store.base import (ANY_ROUTE, LEASE_EXPIRED, MSG_GIVE_UP, RELEASED, Cost, LeaseEnd, ResultNotStorable,
                                         Rescued, clip_error)
from gpu_orchestrator.store.pg_engine import is_transient_db_error
from gpu_orchestrator.store.pg_sql import (COLS, COMPLETE_SET, COST_SET, GRANT_RESULTS, STATUS, append_error, claim_lock,
                                           cost_args, leased_update, lock_key)


class PgLeases:
    engine: Engine  # set by PostgresJobStore
    lease_engine: Engine  # lease renewal and rescue: a small pool of their own

    # -- the dispatcher's moves of an app's queued jobs -------------------------------------------

    @staticmethod
    def _queued_where(frm: str | None, ids: Any, older_than_s: float | None) -> str:
        """The WHERE for an app's queued jobs on route `frm` (None: local, ANY_ROUTE: every route)."""
        sql = "app_id = :app AND status = 'queued'"
        if frm != ANY_ROUTE:
            sql += " AND route IS NOT DISTINCT FROM :frm"
        if ids is not None:
            sql += " AND id = ANY(CAST(:ids AS uuid[]))"
        if older_than_s is not None:
            sql += " AND created_at < now() - make_interval(secs => :age)"
        return sql

    def fail_queued(self, app_id: str, error: str, *, older_than_s: float | None = None,
                    route: str | None = None) -> list[uuid.UUID]:
        """queued -> failed for the app's queued jobs on `route` (they can never run), or only those
        submitted more than `older_than_s` ago; returns their ids."""
        with self.engine.begin() as conn:
            return list(conn.execute(
                sa.text(f"UPDATE jobs SET status = 'failed', finished_at = now(), error = :error, run_after = NULL "
                        f"WHERE {self._queued_where(route, None, older_than_s)} RETURNING id"),
                {"app": app_id, "error": error, "age": older_than_s, "frm": route},
            ).scalars())

    def reroute_queued(self, app_id: str, backend: str | None, reason: str, *, frm: str | None = None,
                       ids: Any = None, older_than_s: float | None = None) -> list[uuid.UUID]:
        """The app's queued jobs on route `frm` go to `backend` (None: local): a model that cannot
        run here after all, or a cloud backend this stack no longer has."""
        with self.engine.begin() as conn:
            return list(conn.execute(
                sa.text(f"UPDATE jobs SET route = :b, route_reason = :r WHERE {self._queued_where(frm, ids, older_than_s)} "
                        f"RETURNING id"),
                {"app": app_id, "b": backend, "r": reason, "frm": frm, "age": older_than_s,
                 "ids": None if ids is None else [str(i) for i in ids]}).scalars())

    # -- dispatch ---------------------------------------------------------------------------------

    def claim(self, *, app_id: str, owner: str, limit: int, lease_s: float, max_in_flight: int,
              route: str | None = None) -> list[Job]:
        """Move up to `limit` queued jobs of one app to running, highest priority first, skipping
        retries still in their backoff. Each claim is a new attempt number (`claims`).

        The per-app advisory lock makes the in-flight bound exact across router replicas;
        SKIP LOCKED keeps claimers from blocking on rows another transaction holds (e.g. cancel).
        """
        with self.engine.begin() as conn:
            conn.execute(lock_key(claim_lock(app_id, route)))
            running = conn.execute(
                sa.text("SELECT count(*) FROM jobs WHERE app_id = :a AND status = 'running' "
                        "AND route IS NOT DISTINCT FROM :route"), {"a": app_id, "route": route}
            ).scalar_one()
            n = min(limit, max_in_flight - running)
            if n <= 0:
                return []
            rows = conn.execute(
                sa.text(
                    f"UPDATE jobs SET status = 'running', attempts = attempts + 1, claims = claims + 1, "
                    f"lease_owner = :owner, lease_expires_at = now() + make_interval(secs => :lease), "
                    f"started_at = coalesce(started_at, now()), dispatched_at = NULL, run_after = NULL "
                    f"WHERE id IN (SELECT id FROM jobs WHERE app_id = :a AND status = 'queued' "
                    f"AND route IS NOT DISTINCT FROM :route AND (run_after IS NULL OR run_after <= now()) "
                    f"ORDER BY priority DESC, created_at, id LIMIT :n FOR UPDATE SKIP LOCKED) "
                    f"RETURNING {COLS}"
                ),
                {"a": app_id, "owner": owner, "lease": lease_s, "n": n, "route": route},
            ).all()
        jobs = [Job.from_row(r) for r in rows]
        jobs.sort(key=lambda j: (-j.priority, j.created_at, j.id))
        return jobs

    def mark_dispatched(self, *, job_id: uuid.UUID, owner: str, attempt: int) -> None:
        """Record that this claim is being handed to a model replica: from now on losing the lease
        counts as a lost run (before it, the claim goes back to the queue for free)."""
        with self.engine.begin() as conn:
            n = conn.execute(
                sa.text("UPDATE jobs SET dispatched_at = now() WHERE id = :id AND status = 'running' "
                        "AND lease_owner = :owner AND claims = :attempt"),
                {"id": job_id, "owner": owner, "attempt": attempt},
            ).rowcount
            if n == 0:
                raise TransitionError(job_id, self._status(conn, job_id), "dispatch")

    def heartbeat(
        self, *, owner: str, leases: Iterable[tuple[uuid.UUID, int]], lease_s: float
    ) -> set[tuple[uuid.UUID, int]]:
        """Extend the leases this owner still holds, each (job id, attempt); returns those held.
        An older attempt of a job that was rescued and claimed again is not renewed."""
        pairs = list(leases)
        if not pairs:
            return set()
        with self.lease_engine.begin() as conn:
            rows = conn.execute(
                sa.text(
                    "UPDATE jobs SET lease_expires_at = now() + make_interval(secs => :lease) "
                    "FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[])) AS h(id, attempt) "
                    "WHERE jobs.id = h.id AND jobs.claims = h.attempt AND jobs.status = 'running' "
                    "AND jobs.lease_owner = :owner RETURNING jobs.id, jobs.claims"
                ),
                {"ids": [str(i) for i, _ in pairs], "attempts": [a for _, a in pairs], "owner": owner,
                 "lease": lease_s},
            ).all()
        return {(r.id, r.claims) for r in rows}

    def set_cloud_ref(self, *, job_id: uuid.UUID, owner: str, attempt: int, ref: dict[str, Any]) -> None:
        """Record the provider's id for this attempt's run (before waiting on it)."""
        with self.engine.begin() as conn:
            n = conn.execute(
                sa.text("UPDATE jobs SET cloud_ref = CAST(:ref AS jsonb) WHERE id = :id AND status = 'running' "
                        "AND lease_owner = :owner AND claims = :attempt"),
                {"id": job_id, "owner": owner, "attempt": attempt, "ref": json.dumps(ref)},
            ).rowcount
            if n == 0:
                raise TransitionError(job_id, self._status(conn, job_id), "record its cloud run")

    def complete(self, *, job_id: uuid.UUID, owner: str, attempt: int, result: Any, backend: str,
                 cost: Cost | None = None) -> Job:
        """running -> succeeded, only for the lease holder of this very attempt. ResultNotStorable
        when Postgres refuses the result itself (a NUL or a lone surrogate in a string)."""
        try:
            # The owner of the job may download what its result names (artifact_owners).
            return self._leased_update(
                COMPLETE_SET, {"result": json.dumps(result, default=str), "backend": backend, **cost_args(cost)},
                job_id=job_id, owner=owner, attempt=attempt, wanted="complete", grant=sorted(set(artifact_uris(result))),
            )
        except sa.exc.DBAPIError as e:
            if is_transient_db_error(e):
                raise
            orig = e.orig or e
            why = (str(orig).strip().splitlines() or [""])[0]  # psycopg2 puts the reason first, context after
            raise ResultNotStorable(f"{type(orig).__name__}: {why}") from e

    def fail_attempt(
        self, *, job_id: uuid.UUID, owner: str, attempt: int, error: str, retryable: bool = True,
        backend: str | None = None, kind: str = "error", retry_delay_s: float = 0.0, cost: Cost | None = None,
    ) -> Job:
        """running -> queued (attempts left and retryable; claimable after `retry_delay_s`) or
        failed; guarded like complete(). The error joins the job's `errors` history."""
        requeue = ":retry AND attempts < max_attempts"
        return self._leased_update(
            f"status = CASE WHEN {requeue} THEN 'queued' ELSE 'failed' END, "
            f"finished_at = CASE WHEN {requeue} THEN NULL ELSE now() END, "
            f"run_after = CASE WHEN {requeue} THEN now() + make_interval(secs => :delay) END, "
            f"error = :error, backend = coalesce(:backend, backend), dispatched_at = NULL, {COST_SET}, "
            + append_error(":kind", ":error"),
            {"error": clip_error(error), "retry": retryable, "backend": backend, "kind": kind, "delay": retry_delay_s,
             **cost_args(cost)},
            job_id=job_id, owner=owner, attempt=attempt, wanted="record a failed attempt",
        )

    def _leased_update(self, set_sql: str, args: dict[str, Any], *, job_id: uuid.UUID, owner: str, attempt: int,
                       wanted: str, grant: list[str] | None = None) -> Job:
        """An attempt ends (see pg_sql.leased_update); `grant`: result artifacts for the job's owner."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.text(leased_update(set_sql)), {"id": job_id, "owner": owner, "attempt": attempt,
                                                                 **args}).first()
            if row is None:
                raise TransitionError(job_id, self._status(conn, job_id), wanted)
            if grant and row.owner is not None:
                conn.execute(sa.text(GRANT_RESULTS), {"o": row.owner, "j": job_id, "uris": grant})
        return Job.from_row(row)

    def rescue_expired(self, policy: RetryPolicy = RetryPolicy()) -> list[Rescued]:
        """Running jobs whose lease expired (their router died or lost Postgres for longer than the
        lease). Not the job's fault, so no attempt is charged: a claim never handed to a model
        replica goes back as it was; a run that was on one counts in lost_attempts, comes back
        after a backoff, and fails the job once it reaches policy.max_lost_attempts."""
        return self._requeue_leases("lease_expires_at < now()", {}, policy=policy, how=LEASE_EXPIRED,
                                    skip_locked=True)

    def release(self, *, owner: str, policy: RetryPolicy = RetryPolicy()) -> list[Rescued]:
        """A router stopping gracefully hands back every lease it holds at once (one UPDATE):
        running -> queued at once, attempt refunded. A run that was already on a model replica still
        counts in lost_attempts: Serve also stops unhealthy routers, and a job making its router
        unhealthy must not loop for ever."""
        return self._requeue_leases("lease_owner = :owner", {"owner": owner}, policy=policy, how=RELEASED,
                                    skip_locked=False)

    def _requeue_leases(self, where: str, args: dict[str, Any], *, policy: RetryPolicy, how: LeaseEnd,
                        skip_locked: bool) -> list[Rescued]:
        sql = (
            f"WITH x AS (SELECT id, dispatched_at IS NOT NULL AS lost FROM jobs "
            f"WHERE status = 'running' AND {where} FOR UPDATE{' SKIP LOCKED' if skip_locked else ''}), "
            f"m AS (SELECT j.id, x.lost, x.lost AND j.lost_attempts + 1 >= :cap AS give_up, "
            f"CASE WHEN x.lost AND j.lost_attempts + 1 >= :cap THEN format(:msg_give_up, j.lost_attempts + 1, j.claims) "
            f"WHEN x.lost THEN format(:msg_lost, j.claims, j.lost_attempts + 1, :cap) "
            f"ELSE format(:msg_undispatched, j.claims) END AS msg FROM jobs j JOIN x ON j.id = x.id) "
            f"UPDATE jobs j SET "
            f"status = CASE WHEN m.give_up THEN 'failed' ELSE 'queued' END, "
            f"finished_at = CASE WHEN m.give_up THEN now() END, "
            f"attempts = greatest(j.attempts - 1, 0), "
            f"lost_attempts = j.lost_attempts + m.lost::int, "
            f"run_after = CASE WHEN m.lost AND NOT m.give_up AND :backoff THEN now() + make_interval(secs => "
            f"least(:bmax, :base * power(2, j.lost_attempts)) * (0.5 + random() / 2)) END, "
            f"error = m.msg, "
            + append_error("CASE WHEN m.lost THEN :kind_lost ELSE :kind_undispatched END", "m.msg", "j.")
            + ", lease_owner = NULL, lease_expires_at = NULL, dispatched_at = NULL "
            "FROM m WHERE j.id = m.id RETURNING j.id, j.app_id, j.status, j.error, m.lost"
        )
        params = {
            **args, "cap": policy.max_lost_attempts, "backoff": how.backoff, "bmax": policy.backoff_max_s,
            "base": policy.backoff_s, "kind_lost": how.kind_lost, "kind_undispatched": how.kind_undispatched,
            "msg_lost": how.msg_lost, "msg_undispatched": how.msg_undispatched, "msg_give_up": MSG_GIVE_UP,
        }
        with self.lease_engine.begin() as conn:
            rows = conn.execute(sa.text(sql), params).all()
        return [Rescued(r.id, r.app_id, JobStatus(r.status), r.error, r.lost) for r in rows]

    def _status(self, conn: Connection, job_id: uuid.UUID) -> str | None:
        return conn.execute(sa.text(STATUS), {"id": job_id}).scalar()
