"""Where this code runs inside Serve: the application's name and the replica's id, with defaults
outside a replica (tests, scripts)."""

from __future__ import annotations

DEFAULT_APP_NAME = "orchestrator"


def app_name() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().app_name
    except Exception:
        return DEFAULT_APP_NAME


def deployment_and_replica(default: str) -> tuple[str, str]:
    """(deployment name, replica id) inside a Serve replica; (default, pid) outside one."""
    import os

    try:
        from ray import serve

        ctx = serve.get_replica_context()
        return ctx.deployment, ctx.replica_id.unique_id
    except Exception:
        return default, str(os.getpid())


def node_id() -> str | None:
    """The Ray node this process runs on, or None outside a Ray worker."""
    try:
        import ray

        # Outside a Ray worker (unit tests) asking would start a local Ray instance.
        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:
        return None


def gpu_index() -> int | None:
    """The index on its node of the GPU Ray gave this process (the first, where it has several),
    or None without one. The arbiter accounts VRAM per physical GPU from it."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        ids = ray.get_gpu_ids()
        return int(ids[0]) if ids else None
    except Exception:
        return None


def replica_id() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:
        return "local"
