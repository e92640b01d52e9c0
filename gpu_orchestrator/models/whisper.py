"""`whisper`: speech to text with openai-whisper (`whisper.load_model(name or checkpoint path)`).

Input: `audio`, an artifact URI (uploaded through the router: POST /v1/artifacts, or a multipart
submit), plus `language` and `task` (transcribe | translate). Output: text, segments with start/end
timestamps, detected language. Decoding goes through ffmpeg; the `imageio-ffmpeg` package in this
deployment's runtime_env ships the binary, which is put on PATH at load, so a fresh machine needs no
system ffmpeg.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from gpu_orchestrator.store.artifacts import ArtifactStore

from .base import JobContext, ModelDeployment

AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg", ".m4a", ".webm", ".mp4", ".aac", ".opus")


class Whisper(ModelDeployment):
    max_concurrent = 1  # one job at a time on the loaded model (see ModelDeployment)
    model_name = "whisper"

    def __init__(self, *, model: str | None = None, demo: bool = False, tiny_path: str | None = None,
                 artifacts_url: str | None = None, redis_url: str | None = None, vram_gb: float = 0.0):
        if not model and not demo:
            raise ValueError("whisper: set `model` (a name like large-v3 or a checkpoint path), or `demo: true`")
        self.model_ref, self.demo, self.tiny_path = model, demo, tiny_path
        self.artifacts = ArtifactStore(artifacts_url) if artifacts_url else None
        super().__init__(redis_url=redis_url, vram_gb=vram_gb)

    def load(self) -> None:
        import torch
        import whisper

        _ffmpeg_on_path()
        ref = self.model_ref
        if self.demo:
            from .builders import build_tiny_whisper

            ref = str(build_tiny_whisper(self.tiny_path))
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = whisper.load_model(ref, device=self.device)

    # The warm tier: the model object stays; only its tensors move (base.py, parking.py).
    def parked_modules(self) -> list[Any]:
        return [self.model]

    def unload(self) -> None:
        self.model = None

    def infer(self, params: dict[str, Any], ctx: JobContext) -> Any:
        import whisper

        if self.artifacts is None:
            raise RuntimeError("whisper: no artifact store configured (artifacts_url)")
        path = self.artifacts.local_path(params["audio"])
        try:
            audio = whisper.load_audio(str(path))
        finally:
            self.artifacts.cleanup_tmp(path)
        duration = len(audio) / whisper.audio.SAMPLE_RATE
        ctx.progress(stage="decoded", audio_s=round(duration, 3))
        ctx.check_cancelled()
        opts: dict[str, Any] = {"task": params.get("task", "transcribe"), "fp16": self.device == "cuda",
                                "temperature": 0.0, "condition_on_previous_text": False}
        if params.get("language"):
            opts["language"] = params["language"]
        res = self.model.transcribe(audio, **opts)
        segments = [{"id": s["id"], "start": round(s["start"], 3), "end": round(s["end"], 3), "text": s["text"]}
                    for s in res["segments"]]
        out = {"text": res["text"], "segments": segments, "language": res.get("language"), "audio_s": round(duration, 3)}
        if self.demo:
            out["untrained"] = True
        return out


def _ffmpeg_on_path() -> None:
    """whisper.load_audio runs `ffmpeg`; use imageio-ffmpeg's bundled binary when none is installed."""
    import shutil

    if shutil.which("ffmpeg"):
        return
    import imageio_ffmpeg

    exe = Path(imageio_ffmpeg.get_ffmpeg_exe())
    # One directory per binary: a link left by a since-deleted virtualenv never gets in the way.
    tag = hashlib.sha1(str(exe).encode()).hexdigest()[:12]
    link_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"gpu-orch-ffmpeg-{os.getuid()}-{tag}"
    link_dir.mkdir(parents=True, exist_ok=True)
    link = link_dir / "ffmpeg"
    if not link.exists():
        tmp = link_dir / f"ffmpeg.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(exe)
        os.replace(tmp, link)  # atomic, also over a dangling link
    os.environ["PATH"] = f"{link_dir}{os.pathsep}{os.environ.get('PATH', '')}"
