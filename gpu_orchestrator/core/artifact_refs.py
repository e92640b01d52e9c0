"""Artifact URIs inside a job's params or result (pure: retention and access control read them)."""

from __future__ import annotations

from typing import Any, Iterator

SCHEME = "artifact://"


def artifact_uris(value: Any) -> Iterator[str]:
    """Every artifact:// URI in a job's params or result (nested lists and objects)."""
    if isinstance(value, str):
        if value.startswith(SCHEME) and not value.startswith(SCHEME + "pending/"):
            yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from artifact_uris(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from artifact_uris(v)
