"""Warm tier on CPU (issue 28): a model's load from host memory against its load from a checkpoint on
disk with the page cache dropped, each in a fresh process, as a replica that scale-to-zero stopped
would start again.

The model is Whisper large-v3's architecture at full size (d_model 1280, 32 encoder and 32 decoder
layers, 20 heads, 128 mel bins, a 51,866-token vocabulary: about 1.5 billion parameters, ~3 GB in
bf16) with random weights, built from torch's own layers and saved once as a real checkpoint.

- cold: the checkpoint read from disk (`torch.load`, its pages dropped from the page cache first),
  the module built without initialising (meta device) and the
  weights assigned, then one forward step (the first answer touches every weight).
- warm (a node-local holder): the same weights held in host memory by the node (here a tmpfs copy
  in /dev/shm: what Ray's object store or a holder actor keeps, shared memory), mapped into a new
  process with no copy (`torch.load(mmap=True)`), then the same forward step.
- parked (the replica stays): a process that loaded once and kept its built module and weights;
  the wake is the first answer (on a GPU, a copy from pinned host memory to the device first:
  bench/gpu/swap.py's figure).

Figures, each the median of --rounds fresh processes: the load step (after `import torch`: build,
weights, first answer) and the process from spawn to first answer (Python and torch's import
included: what a replica start adds). Targets: load step warm/cold <= 0.2x; spawn to first answer
warm/cold <= 0.4x (the issue's end-to-end target is from the arbiter's scale-up, through Serve;
this bench stops at the process it starts).

usage: python bench/warm.py [--rounds 3] [--dir build/warm] [--layers 32]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

LOAD_TARGET = 0.2
E2E_TARGET = 0.4

# Whisper large-v3's dimensions (openai-whisper ModelDimensions).
DIMS = {"n_mels": 128, "n_vocab": 51866, "d": 1280, "heads": 20, "layers": 32, "ctx_text": 448}

CHILD = r'''
import json, sys, time
t0 = time.perf_counter()
import torch
t_import = time.perf_counter()
path, mmap, layers = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
sys.path.insert(0, sys.argv[4])
from warm_model import build
with torch.device("meta"):
    model = build(layers)
t_built = time.perf_counter()
sd = torch.load(path, mmap=mmap, weights_only=True)
model.load_state_dict(sd, assign=True)
model.eval()
t_weights = time.perf_counter()
with torch.no_grad():
    mel = torch.zeros(1, 128, 4, dtype=torch.bfloat16)
    out = model(mel, torch.zeros(1, 1, dtype=torch.long))
assert out.shape[-1] == 51866
t_done = time.perf_counter()
print(json.dumps({"import_s": t_import - t0, "load_s": t_done - t_import, "build_s": t_built - t_import,
                  "weights_s": t_weights - t_built, "answer_s": t_done - t_weights}))
'''

PARKED = r'''
import json, sys, time
import torch
path, layers = sys.argv[1], int(sys.argv[2])
sys.path.insert(0, sys.argv[3])
from warm_model import build
with torch.device("meta"):
    model = build(layers)
model.load_state_dict(torch.load(path, weights_only=True), assign=True)
model.eval()
# Parked: the process, the built module and its weights stay; on a GPU the weights would sit in
# pinned host memory and waking copies them to the device. Here the wake is the first answer.
sys.stdin.readline()
t0 = time.perf_counter()
with torch.no_grad():
    out = model(torch.zeros(1, 128, 4, dtype=torch.bfloat16), torch.zeros(1, 1, dtype=torch.long))
assert out.shape[-1] == 51866
print(json.dumps({"wake_s": time.perf_counter() - t0}))
'''

MODEL = r'''
"""Whisper large-v3's shapes from torch's own layers (random weights; the bench needs the size)."""
import torch
from torch import nn


class WhisperShaped(nn.Module):
    def __init__(self, layers: int, n_mels=128, n_vocab=51866, d=1280, heads=20, ctx_text=448):
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, d, 3, padding=1)
        self.conv2 = nn.Conv1d(d, d, 3, stride=2, padding=1)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, heads, 4 * d, batch_first=True), layers,
                                             enable_nested_tensor=False)
        self.embed = nn.Embedding(n_vocab, d)
        self.pos = nn.Parameter(torch.zeros(ctx_text, d))
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(d, heads, 4 * d, batch_first=True), layers)

    def forward(self, mel, tokens):
        x = torch.nn.functional.gelu(self.conv2(torch.nn.functional.gelu(self.conv1(mel)))).transpose(1, 2)
        x = self.encoder(x)
        y = self.embed(tokens) + self.pos[: tokens.shape[1]]
        y = self.decoder(y, x)
        return y @ self.embed.weight.T


def build(layers: int) -> nn.Module:
    return WhisperShaped(layers).to(torch.bfloat16)
'''


def drop_page_cache(path: Path) -> str:
    """The checkpoint's pages out of the page cache, so the next read comes from the disk."""
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return "its pages dropped from the page cache (posix_fadvise DONTNEED)"


def ensure_checkpoint(d: Path, layers: int) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "warm_model.py").write_text(MODEL)
    ckpt = d / f"whisper-large-v3-shaped-{layers}.pt"
    if not ckpt.exists():
        print(f"building the checkpoint ({layers} + {layers} layers, random weights) ...", flush=True)
        sys.path.insert(0, str(d))
        import torch
        from warm_model import build

        torch.manual_seed(0)
        model = build(layers)
        torch.save(model.state_dict(), ckpt.with_suffix(".tmp"))
        os.replace(ckpt.with_suffix(".tmp"), ckpt)
        del model
    return ckpt


def run_child(path: Path, mmap: bool, layers: int, d: Path) -> dict:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", CHILD, str(path), "1" if mmap else "0", str(layers), str(d)],
                       capture_output=True, text=True)
    total = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"child failed:\n{r.stderr[-2000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["spawn_to_answer_s"] = total
    return out


def run_parked(path: Path, layers: int, d: Path) -> float:
    """A replica that parked instead of exiting: from the wake request to the first answer."""
    p = subprocess.Popen([sys.executable, "-c", PARKED, str(path), str(layers), str(d)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate("wake\n", timeout=600)
    return json.loads(out.strip().splitlines()[-1])["wake_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default="build/warm")
    ap.add_argument("--layers", type=int, default=DIMS["layers"], help="encoder and decoder layers (32: large-v3)")
    ap.add_argument("--shm", default="/dev/shm/gpu-orch-warm")
    args = ap.parse_args()
    d = Path(args.dir).resolve()
    ckpt = ensure_checkpoint(d, args.layers)
    size_gb = ckpt.stat().st_size / 1e9
    shm = Path(args.shm)
    shm.mkdir(parents=True, exist_ok=True)
    held = shm / ckpt.name
    shutil.copyfile(ckpt, held)  # the node's warm copy: host memory (tmpfs, shared pages)
    cold, warm, parked, how = [], [], [], ""
    try:
        for i in range(args.rounds):  # alternated, so drift on the machine lands on both
            how = drop_page_cache(ckpt)
            cold.append(run_child(ckpt, False, args.layers, d))
            warm.append(run_child(held, True, args.layers, d))
            parked.append(run_parked(held, args.layers, d))
            print(f"round {i + 1}: cold load {cold[-1]['load_s']:.2f} s (spawn to answer {cold[-1]['spawn_to_answer_s']:.2f} s), "
                  f"warm load {warm[-1]['load_s']:.2f} s ({warm[-1]['spawn_to_answer_s']:.2f} s), parked wake {parked[-1]:.2f} s",
                  flush=True)
    finally:
        held.unlink(missing_ok=True)

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    load_ratio = med(warm, "load_s") / med(cold, "load_s")
    e2e_ratio = med(warm, "spawn_to_answer_s") / med(cold, "spawn_to_answer_s")
    print(f"\nmodel: Whisper large-v3 shapes, {args.layers}+{args.layers} layers, bf16, checkpoint {size_gb:.2f} GB; "
          f"cold: {how}; medians of {args.rounds} rounds, fresh processes")
    print(f"  load step (build, weights, first answer): cold {med(cold, 'load_s'):.2f} s, warm {med(warm, 'load_s'):.2f} s "
          f"-> holder warm/cold {load_ratio:.2f}x  {'PASS' if load_ratio <= LOAD_TARGET else 'MISS'} (target <= {LOAD_TARGET}x)")
    for name, rows in (("cold", cold), ("warm", warm)):
        print(f"  {name}: build (meta) {med(rows, 'build_s'):.2f} s, weights {med(rows, 'weights_s'):.2f} s, "
              f"first answer {med(rows, 'answer_s'):.2f} s")
    wake = statistics.median(parked)
    pl, pe = wake / med(cold, "load_s"), wake / med(cold, "spawn_to_answer_s")
    print(f"  parked process (no spawn, no build, weights in host memory): wake to first answer {wake:.2f} s -> "
          f"{pl:.2f}x the cold load step  {'PASS' if pl <= LOAD_TARGET else 'MISS'}, {pe:.2f}x cold spawn to answer  "
          f"{'PASS' if pe <= E2E_TARGET else 'MISS'}")
    print(f"  spawn to first answer (python + import torch {med(cold, 'import_s'):.2f} s included): cold "
          f"{med(cold, 'spawn_to_answer_s'):.2f} s, warm {med(warm, 'spawn_to_answer_s'):.2f} s -> "
          f"holder warm/cold {e2e_ratio:.2f}x  "
          f"{'PASS' if e2e_ratio <= E2E_TARGET else 'MISS'} (target <= {E2E_TARGET}x; the issue's end-to-end figure "
          "also counts Serve's replica start)")


if __name__ == "__main__":
    main()
