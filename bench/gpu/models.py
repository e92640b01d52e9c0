"""Real-size model check for a CUDA machine: build each model at its REAL size with random weights
from its real config (no download), save it, then measure load-from-disk time (the same loading
call the deployment uses), bytes on disk, VRAM held and one inference. Prints a table.

    python bench/gpu/models.py [--only sdxl,zimage,whisper,llm] [--dir /tmp/gpu-orch-bench]
    python bench/gpu/models.py --tiny      # the same code paths with tiny configs (CPU is fine)

Skips cleanly (exit 0) without CUDA unless --tiny. Needs diffusers, openai-whisper, transformers.
Random weights: outputs are noise; the figures are about memory, I/O and compute, not quality.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def drop_page_cache() -> bool:
    """So 'load from disk' reads the disk, not the cache we just filled (needs root; may be refused)."""
    try:
        subprocess.run(["sync"], check=False)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


# The builders the deployments use for their demo models, here at REAL size.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from gpu_orchestrator.models.builders import build_sdxl, build_whisper, build_zimage, word_tokenizer  # noqa: E402


def build_llm(out: Path, tiny: bool, dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if tiny:
        cfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
    else:  # Qwen2.5-7B-Instruct
        cfg = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                   num_key_value_heads=4, rope_theta=1000000.0, max_position_embeddings=32768)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=152064, tie_word_embeddings=False, **cfg))
    model.to(dtype).save_pretrained(out)
    word_tokenizer().save_pretrained(out)


# -- load + one inference, the way the deployments do it --------------------------------------


def _run_image(pipeline: str, steps: int, path: Path, device: str, dtype, tiny: bool, **kw):
    import diffusers

    t0 = time.perf_counter()
    pipe = getattr(diffusers, pipeline).from_pretrained(path, torch_dtype=dtype).to(device)
    load = _sync(t0, device)
    size, steps = (64, 2) if tiny else (1024, steps)
    t0 = time.perf_counter()
    img = pipe("a photo of an astronaut riding a horse on mars", width=size, height=size, num_inference_steps=steps,
               **kw).images[0]
    return pipe, load, _sync(t0, device), f"{img.size[0]}x{img.size[1]} image, {steps} steps"


def run_sdxl(path: Path, device: str, dtype, tiny: bool):
    return _run_image("StableDiffusionXLPipeline", 30, path, device, dtype, tiny)


def run_zimage(path: Path, device: str, dtype, tiny: bool):
    return _run_image("ZImagePipeline", 9, path, device, dtype, tiny, guidance_scale=0.0)


def run_whisper(path: Path, device: str, dtype, tiny: bool):
    import numpy as np
    import whisper

    t0 = time.perf_counter()
    model = whisper.load_model(str(path / "model.pt"), device=device)
    load = _sync(t0, device)
    sr = 16000
    t = np.arange(30 * sr) / sr
    audio = (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # 30 s tone
    t0 = time.perf_counter()
    res = model.transcribe(audio, language="en", fp16=device == "cuda", temperature=0.0,
                           condition_on_previous_text=False, no_speech_threshold=None)
    return model, load, _sync(t0, device), f"30 s audio, {len(res['segments'])} segments"


def run_llm(path: Path, device: str, dtype, tiny: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    load = _sync(t0, device)
    ids = tok.apply_chat_template([{"role": "user", "content": "hello world"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True).to(device)
    n = 16 if tiny else 128
    t0 = time.perf_counter()
    out = model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    took = _sync(t0, device)
    return model, load, took, f"{out.shape[1] - ids['input_ids'].shape[1]} tokens ({n / took:.0f} tok/s)"


def build_on(device: str, build, path: Path, tiny: bool, dtype) -> None:
    """Build a model's random-weight checkpoint on `device` in its dtype: random init of billions
    of weights on a CPU is slow."""
    import torch

    prev = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype if dtype != torch.float16 else torch.float32)
        with torch.device(device):
            build(path, tiny, dtype)
    finally:
        torch.set_default_dtype(prev)


def _sync(t0: float, device: str) -> float:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
    return time.perf_counter() - t0


MODELS = {
    "whisper": ("openai-whisper large-v3 (1.55B)", build_whisper, run_whisper, "float16"),
    "sdxl": ("SDXL base 1.0 (UNet 2.6B + CLIP-L + bigG)", build_sdxl, run_sdxl, "float16"),
    "llm": ("Qwen2.5-7B-like (transformers)", build_llm, run_llm, "bfloat16"),
    "zimage": ("Z-Image-Turbo (6B DiT + Qwen3-4B)", build_zimage, run_zimage, "bfloat16"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(MODELS))
    ap.add_argument("--dir", default="/tmp/gpu-orch-bench")
    ap.add_argument("--tiny", action="store_true", help="tiny configs: check the code paths (CPU is fine)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available() and not args.tiny:
        print("no CUDA device: skipping the real-size model check (run with --tiny to test the code paths)")
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    print(f"device: {gpu}; torch {torch.__version__}; {'TINY configs' if args.tiny else 'real-size configs'}, random weights")
    root = Path(args.dir)
    rows = []
    for key in args.only.split(","):
        label, build, run, dt = MODELS[key]
        dtype = getattr(torch, dt) if device == "cuda" else torch.float32
        path = root / key
        shutil.rmtree(path, ignore_errors=True)
        t0 = time.perf_counter()
        build_on(device, build, path, args.tiny, dtype)
        build_s = time.perf_counter() - t0
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        dropped = drop_page_cache()
        try:
            obj, load_s, infer_s, what = run(path, device, dtype, args.tiny)
            vram = torch.cuda.memory_reserved() / 2**30 if device == "cuda" else None
            peak = torch.cuda.max_memory_reserved() / 2**30 if device == "cuda" else None
            err = None
        except Exception as e:  # report and go on to the next model
            obj, load_s, infer_s, what, vram, peak, err = None, None, None, "", None, None, f"{type(e).__name__}: {e}"
        row = {"model": key, "what": label, "dtype": dt, "disk_gb": dir_bytes(path) / 1e9, "build_s": build_s,
               "load_s": load_s, "cache_dropped": dropped, "vram_gb": vram, "peak_vram_gb": peak,
               "infer_s": infer_s, "inference": what, "error": err}
        rows.append(row)
        print(json.dumps(row), flush=True)
        del obj
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        shutil.rmtree(path, ignore_errors=True)

    print(f"\n{'model':<44}{'dtype':>9}{'disk GB':>9}{'load s':>8}{'VRAM GB':>9}{'peak GB':>9}{'infer s':>9}  inference")
    for r in rows:
        f = lambda v, p=1: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
        print(f"{r['what']:<44}{r['dtype']:>9}{f(r['disk_gb'], 2):>9}{f(r['load_s']):>8}{f(r['vram_gb']):>9}"
              f"{f(r['peak_vram_gb']):>9}{f(r['infer_s'], 2):>9}  {r['inference'] or r['error']}")
    print("load s = from_pretrained / whisper.load_model to weights on the device"
          + ("" if all(r["cache_dropped"] for r in rows) else " (page cache NOT dropped: disk reads may be cached)"))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if any(r["error"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
