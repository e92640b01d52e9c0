"""The cluster as the arbiter sees it (service.arbiter_ports.ClusterView), from Serve's and Ray's
own status: replica states per deployment of this application, and the alive nodes."""

from __future__ import annotations

from collections import Counter

from gpu_orchestrator.service.arbiter.ports import Node


def serve_replica_states(app_name: str) -> dict[str, dict[str, int]]:
    """Per deployment name of the application: replica counts by state (RUNNING, STARTING, ...).
    Also what GET /v1/workers reports."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:  # Serve not started
        return {}
    # Serve's own JSON details, counted here as serve.status() counts them. serve.status() parses
    # every application's details into pydantic models, which pickle each deployment's request
    # router class: at the arbiter's 4 ticks a second that was ~80% of an idle leader's CPU (py-spy).
    app = (client.get_serve_details().get("applications") or {}).get(app_name)
    if app is None:
        return {}
    return {name: dict(Counter(str(getattr(r["state"], "value", r["state"])) for r in d.get("replicas") or ()))
            for name, d in (app.get("deployments") or {}).items()}  # a ReplicaState, or its value


def alive_nodes() -> list[Node]:
    import ray

    return [Node(n["NodeID"], n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


class RayClusterView:
    def __init__(self, app_name: str):
        self.app_name = app_name

    def replica_states(self) -> dict[str, dict[str, int]]:
        return serve_replica_states(self.app_name)

    def nodes(self) -> list[Node]:
        return alive_nodes()
