"""This node's RAM as the warm tier budgets it (heartbeats carry it to the arbiter): total and
available, bounded by the container's cgroup limit where there is one (a KubeRay pod's memory
limit, not the host's). Linux only (/proc, /sys); elsewhere None."""

from __future__ import annotations

from pathlib import Path

GB = 2**30


def _read_int(path: str) -> int | None:
    try:
        raw = Path(path).read_text().strip()
    except OSError:
        return None
    return int(raw) if raw.isdigit() else None  # cgroup v2 writes "max" when unlimited


def _meminfo() -> dict[str, int]:
    out = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            out[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return {}
    return out


def host_memory() -> tuple[float, float] | None:
    """(total GB, available GB) of RAM for this process's container, or None when unknown."""
    info = _meminfo()
    if "MemTotal" not in info:
        return None
    total, free = info["MemTotal"], info.get("MemAvailable", info.get("MemFree", 0))
    limit = _read_int("/sys/fs/cgroup/memory.max") or _read_int("/sys/fs/cgroup/memory/memory.limit_in_bytes")
    if limit is not None and limit < total:
        used = _read_int("/sys/fs/cgroup/memory.current") or _read_int("/sys/fs/cgroup/memory/memory.usage_in_bytes") or 0
        total, free = limit, min(free, max(0, limit - used))
    return total / GB, free / GB
