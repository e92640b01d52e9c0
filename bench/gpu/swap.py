"""Warm swap on a GPU (issue 28): per model, its cold load (the deployment's own loading code, from a
real-size random-weight checkpoint on disk, the page cache dropped), its park (VRAM before and
after, torch.cuda.mem_get_info), its warm load (the wake from host memory), and the host-to-device
bandwidth measured in the same run. Targets: a warm swap at >= 70% of that bandwidth; SDXL warm
< 0.5 s (H100).

    python bench/gpu/swap.py [--only torch,sdxl,zimage,whisper,llm] [--dir /tmp/gpu-orch-swap]
    python bench/gpu/swap.py --dry-run     # tiny configs on the CPU: the same code paths (CI runs it)

`torch` is Whisper large-v3's shapes in plain torch layers (needs torch only); the others are the
deployments (models/sdxl.py, zimage.py, whisper.py, llm.py with engine=transformers) and need their
packages (diffusers, openai-whisper, transformers): a model whose package is missing is listed as
skipped. vLLM's sleep mode is not measured here (it needs the vLLM runtime_env). Exits 0 without
CUDA unless --dry-run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import models as real_size  # noqa: E402  (bench/gpu/models.py: the real-size builders)

from gpu_orchestrator.models.base import JobContext, ModelDeployment  # noqa: E402

BANDWIDTH_SHARE = 0.7  # of the measured host-to-device bandwidth
SDXL_WARM_S = 0.5
NEEDS = {"torch": "torch", "sdxl": "diffusers", "zimage": "diffusers", "whisper": "whisper", "llm": "transformers"}


class TorchShaped(ModelDeployment):
    """Whisper large-v3's encoder-decoder shapes in torch layers, loaded from a state dict on disk
    the way a checkpoint loader does (module on the meta device, weights assigned, moved)."""

    model_name = "torch"

    def __init__(self, path: Path, layers: int, device: str, dtype: Any):
        self.path, self.layers, self.device, self.dtype = path, layers, device, dtype
        super().__init__()

    def load(self) -> None:
        import torch

        sd = torch.load(self.path, weights_only=True)
        with torch.device("meta"):
            net = shaped(self.layers, 512 if self.layers < 32 else 51866)
        net.load_state_dict(sd, assign=True)
        self.net = net.to(self.device, self.dtype)

    def parked_modules(self) -> list[Any]:
        return [self.net]

    def unload(self) -> None:
        self.net = None

    def infer(self, params: dict[str, Any], ctx: JobContext) -> Any:
        return None


def shaped(layers: int, vocab: int = 51866):
    from torch import nn

    d, heads = 1280, 20
    return nn.ModuleDict({
        "conv1": nn.Conv1d(128, d, 3, padding=1), "conv2": nn.Conv1d(d, d, 3, stride=2, padding=1),
        "encoder": nn.TransformerEncoder(nn.TransformerEncoderLayer(d, heads, 4 * d, batch_first=True), layers,
                                         enable_nested_tensor=False),
        "embed": nn.Embedding(vocab, d),
        "decoder": nn.TransformerDecoder(nn.TransformerDecoderLayer(d, heads, 4 * d, batch_first=True), layers),
    })


def build(key: str, path: Path, tiny: bool, device: str, dtype: Any) -> None:
    import torch

    if key == "torch":
        path.mkdir(parents=True, exist_ok=True)
        with torch.device(device):
            net = shaped(1 if tiny else 32, 512 if tiny else 51866).to(dtype)
        torch.save(net.state_dict(), path / "model.pt")
        return
    real_size.build_on(device, real_size.MODELS[key][1], path, tiny, dtype)


def deployment(key: str, path: Path, tiny: bool, device: str, dtype: Any, dtype_name: str) -> ModelDeployment:
    """The model loaded by its deployment's own code (the cold load: its load_time_s)."""
    if key == "torch":
        return TorchShaped(path / "model.pt", 1 if tiny else 32, device, dtype)
    if key == "sdxl":
        from gpu_orchestrator.models.sdxl import SDXL

        return SDXL(model=str(path), dtype=dtype_name if device == "cuda" else "float32")
    if key == "zimage":
        from gpu_orchestrator.models.zimage import ZImage

        return ZImage(model=str(path), dtype=dtype_name if device == "cuda" else "float32")
    if key == "whisper":
        from gpu_orchestrator.models.whisper import Whisper

        return Whisper(model=str(path / "model.pt"))
    from gpu_orchestrator.models.llm import LLM

    return LLM(model=str(path), engine="transformers")


def free_gb(device: str) -> float | None:
    import torch

    return torch.cuda.mem_get_info()[0] / 2**30 if device == "cuda" else None


def bandwidth_gbs(device: str, gb: float) -> float:
    """Host-to-device copy from pinned memory (on the CPU: a host memory copy), best of three."""
    import torch

    n = max(1, int(min(gb, 4.0) * 2**30))
    src = torch.empty(n, dtype=torch.uint8, pin_memory=device == "cuda")
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        dst = src.to(device, non_blocking=True) if device == "cuda" else src.clone()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
        del dst
    return n / 2**30 / best


def measure(key: str, root: Path, tiny: bool, device: str) -> dict[str, Any]:
    import torch

    dtype_name = "float32" if device != "cuda" else ("float16" if key in ("sdxl", "whisper") else "bfloat16")
    dtype = getattr(torch, dtype_name)
    path = root / key
    shutil.rmtree(path, ignore_errors=True)
    build(key, path, tiny, device, dtype)
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    # A dry run (CI) leaves the machine's page cache alone: other work shares it.
    dropped = False if tiny else real_size.drop_page_cache()
    row: dict[str, Any] = {"model": key, "dtype": dtype_name, "disk_gb": real_size.dir_bytes(path) / 2**30,
                           "cache_dropped": dropped}
    m = deployment(key, path, tiny, device, dtype, dtype_name)
    try:
        if m.state != "resident":
            return {**row, "error": m.load_error or m.state}
        before = free_gb(device)
        parked = asyncio.run(m.park())
        after = free_gb(device)
        if not parked["parked"]:
            return {**row, "cold_s": m.load_time_s, "error": f"not parked: {parked['why']}"}
        asyncio.run(m.wake())
        host_gb = parked["host_gb"]
        bw = bandwidth_gbs(device, host_gb)
        warm_bw = host_gb / m.wake_time_s if m.wake_time_s else None
        return {**row, "cold_s": m.load_time_s, "park_s": m.park_time_s, "warm_s": m.wake_time_s, "host_gb": host_gb,
                "vram_freed_gb": None if before is None else after - before, "h2d_gbs": bw, "warm_gbs": warm_bw,
                "state_after": m.state, "error": None if m.state == "resident" else f"woke to {m.state}"}
    finally:
        del m
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(NEEDS))
    ap.add_argument("--dir", default="/tmp/gpu-orch-swap")
    ap.add_argument("--dry-run", action="store_true", help="tiny configs on whatever device there is (CPU is fine)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print("no CUDA device: skipping the warm swap bench (--dry-run runs its code paths on the CPU)")
        return
    device = "cuda" if cuda else "cpu"
    print(f"device: {torch.cuda.get_device_name(0) if cuda else 'cpu'}; torch {torch.__version__}; "
          f"{'TINY configs (dry run)' if args.dry_run else 'real-size configs'}, random weights")
    rows = []
    for key in args.only.split(","):
        if importlib.util.find_spec(NEEDS[key]) is None:
            rows.append({"model": key, "skipped": f"no {NEEDS[key]} in this environment"})
            print(f"{key}: skipped (no {NEEDS[key]} in this environment)", flush=True)
            continue
        try:
            row = measure(key, Path(args.dir), args.dry_run, device)
        except Exception as e:  # report and go on to the next model
            row = {"model": key, "error": f"{type(e).__name__}: {e}"}
        rows.append(row)
        print(json.dumps(row), flush=True)

    f = lambda v, p=2: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
    print(f"\n{'model':<9}{'dtype':>9}{'host GB':>9}{'cold s':>8}{'park s':>8}{'warm s':>8}{'warm/cold':>10}"
          f"{'VRAM freed':>11}{'H2D GB/s':>9}{'warm GB/s':>10}")
    for r in rows:
        if "skipped" in r or r.get("error"):
            print(f"{r['model']:<9}  {r.get('skipped') or r['error']}")
            continue
        ratio = r["warm_s"] / r["cold_s"] if r["cold_s"] else None
        print(f"{r['model']:<9}{r['dtype']:>9}{f(r['host_gb']):>9}{f(r['cold_s']):>8}{f(r['park_s'], 3):>8}"
              f"{f(r['warm_s'], 3):>8}{f(ratio) + 'x':>10}{f(r['vram_freed_gb']):>11}{f(r['h2d_gbs'], 1):>9}"
              f"{f(r['warm_gbs'], 1):>10}")
    measured = [r for r in rows if "skipped" not in r and not r.get("error")]
    what = "host-to-device" if cuda else "host memory copy (no GPU: the targets are for a GPU)"
    print(f"bandwidth: {what}; cold = the deployment's load step from disk"
          + ("" if all(r.get("cache_dropped") for r in measured) else " (page cache NOT dropped: reads may be cached)"))
    for r in measured:
        share = r["warm_gbs"] / r["h2d_gbs"] if r["warm_gbs"] and r["h2d_gbs"] else None
        verdict = ("PASS" if share is not None and share >= BANDWIDTH_SHARE else "MISS") if cuda else "n/a on CPU"
        print(f"  {r['model']}: warm swap at {f(share)}x of the measured bandwidth: {verdict} (target >= {BANDWIDTH_SHARE}x)")
        if r["model"] == "sdxl":
            ok = ("PASS" if r["warm_s"] < SDXL_WARM_S else "MISS") if cuda else "n/a on CPU"
            print(f"  sdxl: warm load {f(r['warm_s'], 3)} s: {ok} (target < {SDXL_WARM_S} s on an H100)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if any(r.get("error") for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
