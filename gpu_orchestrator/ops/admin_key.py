"""The stack's bootstrap admin key: made by the first `gpu-orch up` of a home, kept in
GPU_ORCH_HOME/admin_key (mode 600), and sent by the CLI to that stack (never to another)."""

from __future__ import annotations

import os
from pathlib import Path

from ..settings import Settings
from . import stack

ADMIN_KEY_FILE = "admin_key"


class NoAdminKey(RuntimeError):
    pass


def stack_api_key(url: str | None = None) -> str | None:
    """The key the CLI sends: $GPU_ORCH_API_KEY, else the stack's bootstrap admin key when `url` is
    that stack's (another stack would refuse a key it never made)."""
    key = os.environ.get("GPU_ORCH_API_KEY")
    if key:
        return key
    home = Settings().home
    if url is not None and stack.load_state(home).get("url", "").rstrip("/") != url.rstrip("/"):
        return None
    try:
        return (home / ADMIN_KEY_FILE).read_text().strip() or None
    except OSError:
        return None


def bootstrap_admin(url: str, home: Path) -> str | None:
    """The first `gpu-orch up` of a home: an admin key, stored in home/admin_key (600). Returns the
    token when one was made now (to print once), None when the home has one already."""
    from gpu_orchestrator.core.keys import Scope
    from gpu_orchestrator.store.access import KeyExists, PostgresAccess
    from gpu_orchestrator.store.pg_engine import create_engine

    path = home / ADMIN_KEY_FILE
    if path.exists():
        return None
    store = PostgresAccess(create_engine(url))  # `up` has just migrated the store
    name = "admin"
    for _ in range(5):
        try:
            _, token = store.create_key(name=name, scopes=[Scope.admin])
            break
        except KeyExists:  # a database another home set up: a key of its own for this one
            name = f"admin-{os.urandom(3).hex()}"
    else:
        raise NoAdminKey("could not create a bootstrap admin key")
    stack.write_private(path, token + "\n")
    store.engine.dispose()
    return token
