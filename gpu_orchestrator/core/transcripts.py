"""A transcription job's result as files people use: plain text, SubRip (SRT), WebVTT. Pure. The
speech UI's downloads, `gpu-orch submit --out` and the OpenAI transcription route all write these."""

from __future__ import annotations

from typing import Any


def cue_time(seconds: float, sep: str = ",") -> str:
    """HH:MM:SS,mmm (SRT; sep "." for WebVTT)."""
    ms = max(0, round(float(seconds) * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _cues(segments: list[dict[str, Any]], sep: str) -> list[str]:
    return [f"{cue_time(s['start'], sep)} --> {cue_time(s['end'], sep)}\n{str(s.get('text', '')).strip()}\n"
            for s in segments]


def to_srt(segments: list[dict[str, Any]]) -> str:
    """One numbered cue per segment (numbered from 1, in order, whatever ids the model gave)."""
    return "\n".join(f"{i}\n{c}" for i, c in enumerate(_cues(segments, ","), 1))


def to_vtt(segments: list[dict[str, Any]]) -> str:
    return "WEBVTT\n\n" + "\n".join(_cues(segments, "."))


def to_text(result: dict[str, Any]) -> str:
    return str(result.get("text", "")).strip() + "\n"
