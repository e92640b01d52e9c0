"""Transcript downloads and the segments table, from the router's segments (the file formats are
gpu_orchestrator/core/transcripts.py's). Pure."""

from __future__ import annotations

from typing import Any

from gpu_orchestrator.core.transcripts import cue_time, to_srt, to_text

__all__ = ["srt_time", "to_srt", "to_text", "segment_rows"]


def srt_time(seconds: float) -> str:
    return cue_time(seconds, ",")


def segment_rows(segments: list[dict[str, Any]]) -> list[list[Any]]:
    return [[cue_time(s["start"], "."), cue_time(s["end"], "."), str(s.get("text", "")).strip()] for s in segments]
