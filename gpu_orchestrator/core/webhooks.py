"""Webhooks, the pure part: which URLs a job may name, the signature, the retry schedule.

A job submitted with `webhook` (a URL) and `webhook_events_filter` (start, completed; default
completed) gets a POST of the job, as GET /v1/jobs/{id} shows it, on each chosen event: `start` when
it first runs, `completed` when it ends (succeeded, failed, cancelled). Signed as Standard Webhooks
sign (Replicate's scheme): headers webhook-id, webhook-timestamp and webhook-signature =
"v1," + base64(HMAC-SHA256(secret, f"{id}.{timestamp}.{body}")), the secret (whsec_...) per API key
(GET /v1/webhooks/default/secret). Delivered at least once: retried with a doubling backoff until
`retry_for_s` after the event, then given up; every try is recorded on the job."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import ipaddress
import secrets
import time
from typing import Callable, Iterable
from urllib.parse import urlsplit

EVENTS = ("start", "completed")
DEFAULT_EVENTS = ("completed",)
SECRET_PREFIX = "whsec_"
SIGNATURE_TOLERANCE_S = 300  # a receiver refuses a timestamp further off than this (replays)


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify(secret: str, headers: dict[str, str], body: bytes, now: float | None = None) -> bool:
    """What a receiver does (and the tests): the signature matches and the timestamp is recent."""
    h = {k.lower(): v for k, v in headers.items()}
    try:
        ts = int(h["webhook-timestamp"])
    except (KeyError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - ts) > SIGNATURE_TOLERANCE_S:
        return False
    want = sign(secret, h.get("webhook-id", ""), ts, body)
    return any(hmac.compare_digest(want, s) for s in h.get("webhook-signature", "").split())


def events_problem(events: Iterable[str]) -> str | None:
    bad = [e for e in events if e not in EVENTS]
    if bad:
        return f"unknown event(s) {bad}: choose from {list(EVENTS)}"
    return None


def url_problem(url: str, *, allow: Iterable[str] = (), allow_loopback: bool = False,
                resolve: Callable[[str], list[str]] | None = None) -> str | None:
    """Why a job may not send to `url`, or None. http(s) only; no host on the cluster's own networks
    (private, loopback, link-local: where the router's neighbours live) unless the host, or a
    network holding its address, is in `allow`, or it is loopback and `allow_loopback` (a stack
    that listens on loopback only). `resolve`: host -> its addresses (checked at each send too)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (reading it raises on a bad port)
    except ValueError as e:
        return f"not a URL: {e}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    if len(url) > 2048:
        return "longer than 2048 characters"
    host = parts.hostname.lower()
    allowed = {a.strip().lower() for a in allow}
    if host in allowed:
        return None
    try:
        addrs = [host] if is_ip(host) else (resolve(host) if resolve else [])
    except (OSError, UnicodeError, ValueError) as e:  # an IDNA error for a malformed name too
        return f"its host {host!r} does not resolve ({e})"
    for addr in addrs:
        ip = ipaddress.ip_address(addr.split("%")[0])
        if ip.version == 6 and ip.ipv4_mapped is not None:  # ::ffff:10.0.0.1 is 10.0.0.1
            ip = ip.ipv4_mapped
        if any(_in(ip, a) for a in allowed):
            continue
        if ip.is_loopback and allow_loopback:
            continue
        if not ip.is_global or ip.is_multicast:  # private, loopback, link-local, shared (100.64/10), reserved
            return (f"{host} is on a private or local network ({ip}); the operator may allow it "
                    f"(router.webhooks.allow)")
    return None


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return True


def _in(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, allowed: str) -> bool:
    try:
        return ip in ipaddress.ip_network(allowed, strict=False)
    except ValueError:
        return False  # a host name in the allow-list


def backoff_s(attempt: int, base_s: float, max_s: float) -> float:
    """Seconds before try `attempt + 1` after `attempt` failed ones: base, doubling, capped."""
    return min(max_s, base_s * 2 ** max(0, attempt - 1))


def due_events(old_status: str, new_status: str, events: Iterable[str], pending: Iterable[str],
               delivered: Iterable[str]) -> list[str]:
    """The pending events after a status change (the migration's trigger does the same in SQL)."""
    out = list(pending)
    if new_status in ("succeeded", "failed", "cancelled") and "completed" in events and "completed" not in out:
        out.append("completed")
    elif (new_status == "running" and old_status == "queued" and "start" in events and "start" not in out
          and "start" not in delivered):
        out.append("start")
    return out


@dataclasses.dataclass(frozen=True)
class Try:
    """One send of one event: delivered, or failed with a retry in `retry_in_s` (None: given up)."""

    event: str
    delivered: bool
    status: int | None
    error: str | None
    retry_in_s: float | None


def after_try(pending: Iterable[str], state: dict | None, event: str, *, at: str, delivered: bool,
              status: int | None, error: str | None, retry_at: str | None) -> tuple[list[str], dict]:
    """A job's pending events and delivery record after one try to send `event`: delivered, failed
    with the next try at `retry_at`, or (retry_at None) failed and given up. Each event keeps its
    own tries and retry time, so one receiver's trouble with `start` delays no `completed`."""
    st = dict(state or {})
    st["attempts"] = int(st.get("attempts", 0)) + 1
    st.update(last_status=status, last_error=error, last_attempt_at=at)
    st["tries"] = {**(st.get("tries") or {}), event: int((st.get("tries") or {}).get(event, 0)) + 1}
    retries = dict(st.get("retry_at") or {})
    retries.pop(event, None)
    left = list(pending)
    if delivered or retry_at is None:
        left = [e for e in left if e != event]
        key = "delivered" if delivered else "gave_up"
        st[key] = {**(st.get(key) or {}), event: at}
    else:
        retries[event] = retry_at
    st["retry_at"] = retries
    return left, st


def due_now(pending: Iterable[str], state: dict | None, now: str) -> list[str]:
    """The pending events whose next try is due at `now` (ISO times compare as instants here)."""
    retries = (state or {}).get("retry_at") or {}
    return [e for e in pending if e not in retries or _t(retries[e]) <= _t(now)]


def next_try(pending: Iterable[str], state: dict | None, now: str) -> str | None:
    """When the job's next try is due: its earliest pending event's (now for one never tried)."""
    retries = (state or {}).get("retry_at") or {}
    times = [retries.get(e, now) for e in pending]
    return min(times, key=_t) if times else None


def _t(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()
