"""Transcript downloads: plain text and SubRip (SRT) from the router's segments. Pure."""

from __future__ import annotations

from typing import Any


def srt_time(seconds: float) -> str:
    ms = max(0, round(float(seconds) * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def to_srt(segments: list[dict[str, Any]]) -> str:
    """One numbered cue per segment (numbered from 1, in order, whatever ids the model gave)."""
    cues = []
    for i, s in enumerate(segments, 1):
        cues.append(f"{i}\n{srt_time(s['start'])} --> {srt_time(s['end'])}\n{str(s.get('text', '')).strip()}\n")
    return "\n".join(cues)


def to_text(result: dict[str, Any]) -> str:
    return str(result.get("text", "")).strip() + "\n"


def segment_rows(segments: list[dict[str, Any]]) -> list[list[Any]]:
    return [[srt_time(s["start"]).replace(",", "."), srt_time(s["end"]).replace(",", "."),
             str(s.get("text", "")).strip()] for s in segments]
