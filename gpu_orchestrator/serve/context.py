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


def replica_id() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:
        return "local"
