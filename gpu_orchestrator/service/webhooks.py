"""The webhook sender: every router replica runs one. It claims due deliveries from the queue
(store/pg_webhooks.py; a job's status change marks them in its own transaction), POSTs each job as
GET /v1/jobs/{id} shows it, signed with its key's secret (core/webhooks.py), and records every try on
the job. A failed try comes back after a doubling backoff until `retry_for_s` after the event. It
never blocks the job path: its own task, its own HTTP client, a bounded time per POST."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import socket
import time
import uuid
from typing import Callable, Iterable, Protocol
from urllib.parse import urlsplit

import httpx

from gpu_orchestrator.core.config import WebhookSpec
from gpu_orchestrator.core.jobs import Job
from gpu_orchestrator.core.webhooks import Try, backoff_s, is_ip, sign, url_problem

log = logging.getLogger("gpu_orchestrator.webhooks")
BATCH = 16
CLAIM_LEASE_S = 60.0  # a sender that dies mid-send: its claims come back after this (sent again)


class WebhookQueue(Protocol):
    def claim(self, limit: int, lease_s: float) -> list[tuple[Job, list[str]]]: ...
    def record(self, job_id: uuid.UUID, tries: Iterable[Try]) -> None: ...
    def secret(self, owner: str) -> str: ...


def resolve(host: str) -> list[str]:
    return sorted({info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})


class WebhookSender:
    def __init__(self, queue: WebhookQueue, spec: WebhookSpec, *, allow_loopback: bool,
                 resolver: Callable[[str], list[str]] = resolve, clock: Callable[[], float] = time.time):
        self.queue, self.spec, self.allow_loopback = queue, spec, allow_loopback
        self.resolver, self.clock = resolver, clock
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._http: httpx.AsyncClient | None = None
        self._secrets: dict[str, str] = {}

    def url_problem(self, url: str) -> str | None:
        """Why a job may not name this URL (checked at submit, and again at each send: DNS changes)."""
        return url_problem(url, allow=self.spec.allow, allow_loopback=self.allow_loopback, resolve=self.resolver)

    def start(self) -> None:
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._wake = asyncio.Event()
            self._task = self._loop.create_task(self._run())

    def poke(self) -> None:
        """A delivery fell due (from any thread: the LISTEN callback runs on its own)."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except BaseException:
                pass
            self._task = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            try:
                sent = await self.run_once()
            except Exception as e:  # the store away: try again at the next poll
                log.warning("webhook queue unavailable: %s", e)
                sent = 0
            if sent:
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.spec.poll_s)
            except asyncio.TimeoutError:
                pass

    async def run_once(self) -> int:
        """Send what is due now; the number of jobs tried."""
        claimed = await asyncio.to_thread(self.queue.claim, BATCH, CLAIM_LEASE_S)
        if claimed:
            await asyncio.gather(*(self._deliver(job, events) for job, events in claimed))
        return len(claimed)

    async def _deliver(self, job: Job, events: list[str]) -> None:
        tries = [await self._send(job, event) for event in events]  # in order: start before completed
        await asyncio.to_thread(self.queue.record, job.id, tries)

    async def _send(self, job: Job, event: str) -> Try:
        assert job.webhook is not None
        status: int | None = None
        try:
            target = await asyncio.to_thread(self._pin, job.webhook)
        except _Refused as e:
            target, problem = None, str(e)
        if target is not None:
            url, host_header, sni = target
            body = json.dumps(job.to_api(), default=str).encode()
            ts = int(self.clock())
            msg_id = f"{job.id}.{event}"
            owner = job.owner or ""
            if owner not in self._secrets:
                self._secrets[owner] = await asyncio.to_thread(self.queue.secret, owner)
            headers = {"host": host_header, "content-type": "application/json", "user-agent": "gpu-orchestrator-webhooks",
                       "webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-event": event,
                       "webhook-signature": sign(self._secrets[owner], msg_id, ts, body)}
            try:
                if self._http is None:  # no proxies from the environment: the address checked is the one used
                    self._http = httpx.AsyncClient(timeout=self.spec.timeout_s, follow_redirects=False, trust_env=False)
                r = await self._http.post(url, content=body, headers=headers,
                                          extensions={"sni_hostname": sni} if sni else None)
                status = r.status_code
                problem = None if 200 <= status < 300 else f"answered {status}"
            except httpx.HTTPError as e:
                problem = f"{type(e).__name__}: {e}"[:500]
        retry = None if problem is None else self._retry_in(job, event)
        if problem is not None:
            log.info("webhook %s for job %s: %s (%s)", event, job.id, problem,
                     "gave up" if retry is None else f"again in {retry:g} s")
        return Try(event, problem is None, status, problem, retry)

    def _pin(self, url: str) -> tuple[str, str, str | None]:
        """(the URL with the host's checked address, the Host header, the TLS server name): the
        address that passed the check is the one connected to (no second lookup to rebind)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        try:
            addrs = [host] if is_ip(host) else self.resolver(host)
        except (OSError, UnicodeError, ValueError) as e:
            raise _Refused(f"its host {host!r} does not resolve ({e})") from None
        problem = url_problem(url, allow=self.spec.allow, allow_loopback=self.allow_loopback, resolve=lambda _: addrs)
        if problem is not None or not addrs:
            raise _Refused(problem or f"its host {host!r} has no address")
        ip = addrs[0]
        netloc = (f"[{ip}]" if ":" in ip else ip) + (f":{parts.port}" if parts.port else "")
        host_header = parts.netloc.rpartition("@")[2]
        return parts._replace(netloc=netloc).geturl(), host_header, host if parts.scheme == "https" else None

    def _retry_in(self, job: Job, event: str) -> float | None:
        """Seconds to the event's next try, or None once `retry_for_s` has passed since the event."""
        since = job.finished_at if event == "completed" else job.started_at
        age = self.clock() - (since.timestamp() if isinstance(since, dt.datetime) else self.clock())
        if age >= self.spec.retry_for_s:
            return None
        tries = int(((job.webhook_state or {}).get("tries") or {}).get(event, 0)) + 1
        return min(backoff_s(tries, self.spec.backoff_s, self.spec.backoff_max_s), max(0.0, self.spec.retry_for_s - age))


class _Refused(Exception):
    """The URL may not be sent to now (checked at each send: DNS changes)."""
