"""Moving a built model between the GPU and host memory (the warm tier's park and wake).

Parking keeps everything that was slow to build (the pipeline, the module tree, the tokenizer) and
moves only the tensors: to page-locked host memory where CUDA can pin it, so waking is one
host-to-device copy at the bus's speed. Pinning needs the process's memlock limit to allow it in a
container (docs/warm.md); where it is refused the tensors stay in ordinary host memory (a slower
wake, never a failed one)."""

from __future__ import annotations

import gc
import logging
from typing import Any, Iterable

log = logging.getLogger("gpu_orchestrator.models")


def modules_of(obj: Any) -> list[Any]:
    """The torch modules of a model object: itself if it is one, else a diffusers pipeline's
    components (anything with .components) that are modules."""
    import torch

    if isinstance(obj, torch.nn.Module):
        return [obj]
    comps = getattr(obj, "components", None)
    if isinstance(comps, dict):
        return [m for m in comps.values() if isinstance(m, torch.nn.Module)]
    return []


def tensors_gb(modules: Iterable[Any]) -> float:
    """Bytes of parameters and buffers, in GB."""
    n = 0
    for m in modules:
        for t in (*m.parameters(), *m.buffers()):
            n += t.numel() * t.element_size()
    return n / 2**30


def to_host(modules: Iterable[Any]) -> bool:
    """Move the modules' tensors to host memory, pinned where CUDA allows. True if pinned."""
    import torch

    pin = torch.cuda.is_available()
    for m in modules:
        m.to("cpu")
        if not pin:
            continue
        try:
            for t in (*m.parameters(), *m.buffers()):
                t.data = t.data.pin_memory()
        except RuntimeError as e:  # memlock limit, or no room to lock: pageable memory still works
            log.warning("could not pin %s's weights in host memory (%s): waking will be slower", type(m).__name__, e)
            pin = False
    release_gpu_memory()
    return pin


def to_device(modules: Iterable[Any], device: str) -> None:
    """Copy the modules' tensors back to `device` (from pinned memory: asynchronously, then wait)."""
    import torch

    for m in modules:
        m.to(device, non_blocking=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def release_gpu_memory() -> None:
    """Hand the caching allocator's free blocks back to the driver (what other processes see)."""
    gc.collect()
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
