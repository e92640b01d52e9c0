"""OpenAI Chat Completions wire format <-> our chat jobs. Pure."""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Fields of the OpenAI request we map onto the chat app's parameters; others are accepted and ignored.
MAPPED = ("messages", "max_tokens", "temperature", "seed")


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: Any
    stream: bool = False
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None

    def job_params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"messages": self.messages}
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        if max_tokens is not None:
            out["max_tokens"] = max_tokens
        if self.temperature is not None:
            out["temperature"] = self.temperature
        if self.seed is not None:
            out["seed"] = self.seed
        return out


def completion(job_id: str, model: str, result: dict[str, Any], created: int | None = None) -> dict[str, Any]:
    n, prompt = int(result.get("completion_tokens", 0)), int(result.get("prompt_tokens", 0))
    return {
        "id": f"chatcmpl-{job_id}",
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.get("text", "")},
                     "finish_reason": result.get("finish_reason", "stop")}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n},
    }


def chunk(job_id: str, model: str, created: int, delta: dict[str, Any], finish_reason: str | None = None) -> str:
    body = {"id": f"chatcmpl-{job_id}", "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
    return f"data: {json.dumps(body)}\n\n"


def models_list(app_ids: list[str]) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": a, "object": "model", "created": 0, "owned_by": "gpu-orchestrator"} for a in app_ids]}
