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
        port = parts.port  # raises on a bad port
    except ValueError as e:
        return f"not a URL: {e}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    if len(url) > 2048:
        return "longer than 2048 characters"
    del port
    host = parts.hostname.lower()
    allowed = {a.strip().lower() for a in allow}
    if host in allowed:
        return None
    try:
        addrs = [host] if _is_ip(host) else (resolve(host) if resolve else [])
    except OSError as e:
        return f"its host {host!r} does not resolve ({e})"
    for addr in addrs:
        ip = ipaddress.ip_address(addr.split("%")[0])
        if any(_in(ip, a) for a in allowed):
            continue
        if ip.is_loopback and allow_loopback:
            continue
        if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast or ip.is_unspecified:
            return (f"{host} is on a private or local network ({ip}); the operator may allow it "
                    f"(router.webhooks.allow)")
    return None


def _is_ip(host: str) -> bool:
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


def after_try(pending: Iterable[str], state: dict | None, event: str, *, at: str, delivered: bool,
              status: int | None, error: str | None, give_up: bool) -> tuple[list[str], dict]:
    """A job's pending events and delivery record after one try to send `event` (stores share it)."""
    st = dict(state or {})
    st["attempts"] = int(st.get("attempts", 0)) + 1
    st.update(last_status=status, last_error=error, last_attempt_at=at)
    left = list(pending)
    if delivered or give_up:
        left = [e for e in left if e != event]
        key = "delivered" if delivered else "gave_up"
        st[key] = {**(st.get(key) or {}), event: at}
    return left, st
