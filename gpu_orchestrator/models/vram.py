"""The GPU memory a model replica has used at its peak, as the arbiter packs by it (docs/warm.md):
the largest of torch's own peak (`max_memory_reserved`: the caching allocator's high-water mark,
not today's `memory_reserved`) and what NVML reports for this process and its children (a vLLM
engine runs in a child process; NVML also counts the CUDA context, which torch does not). NVML is
sampled at each heartbeat, so its figure is a peak of those samples. None without CUDA.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

GB = 2**30


def _children(pid: int) -> set[int]:
    """pid and every process below it (Linux /proc)."""
    out, todo = {pid}, [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                kids = {int(k) for k in task.read_text().split()}
            except (OSError, ValueError):
                continue
            todo += list(kids - out)
            out |= kids
    return out


def nvml_gb(pid: int | None = None) -> float | None:
    """GPU memory NVML reports for this process tree, on every GPU, or None when NVML is absent."""
    try:
        import pynvml  # nvidia-ml-py: installed with vLLM and with torch's CUDA builds' tooling
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        mine = _children(pid or os.getpid())
        used = 0
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
                if proc.pid in mine and proc.usedGpuMemory:
                    used += proc.usedGpuMemory
        return used / GB
    except Exception:  # no driver, or NVML cannot see processes (some containers): torch's figure only
        return None


class PeakVram:
    """A replica's peak GPU memory, sampled (at heartbeats)."""

    def __init__(self) -> None:
        self.peak_gb: float | None = None

    def sample(self, torch: Any) -> float | None:
        if torch is None or not torch.cuda.is_available():
            return self.peak_gb
        figures = [torch.cuda.max_memory_reserved() / GB, nvml_gb()]
        now = max((f for f in figures if f is not None), default=None)
        if now is not None:
            self.peak_gb = now if self.peak_gb is None else max(self.peak_gb, now)
        return self.peak_gb
