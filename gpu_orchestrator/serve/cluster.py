"""The cluster as the arbiter sees it (service.arbiter_ports.ClusterView), from Serve's and Ray's
own status: replica states per deployment of this application, and the alive nodes."""

from __future__ import annotations

from gpu_orchestrator.service.arbiter_ports import Node


def serve_replica_states(app_name: str) -> dict[str, dict[str, int]]:
    """Per deployment name of the application: replica counts by state (RUNNING, STARTING, ...).
    Also what GET /v1/workers reports."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return {}
    return {
        name: {str(getattr(k, "value", k)): n for k, n in d.replica_states.items()}
        for name, d in app.deployments.items()
    }


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
