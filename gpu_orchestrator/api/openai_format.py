"""OpenAI Chat Completions wire format <-> our chat jobs. Pure."""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Fields of the OpenAI request we map onto the chat app's parameters; others are accepted and ignored.
MAPPED = ("messages", "max_tokens", "temperature", "seed", "min_tokens")


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: Any
    stream: bool = False
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    # Not OpenAI's, but vLLM's OpenAI server takes it too (extra_body={"min_tokens": n}).
    min_tokens: int | None = None

    def job_params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"messages": self.messages}
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        if max_tokens is not None:
            out["max_tokens"] = max_tokens
        if self.temperature is not None:
            out["temperature"] = self.temperature
        if self.seed is not None:
            out["seed"] = self.seed
        if self.min_tokens is not None:
            out["min_tokens"] = self.min_tokens
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


# The openai SDK's default timeout is 600 s and it retries (twice by default) on a timeout or a 5xx,
# each retry a new request; it does not send an Idempotency-Key. A non-stream wait ends before the
# client's own timeout with a retryable "still running" answer, and its retry (same body, same
# client, `x-stainless-retry-count` >= 1) is matched back to the first request's job.
WAIT_CAP_S = 590.0
READ_TIMEOUT_MARGIN_S = 5.0


def wait_bound_s(job_timeout_s: float, read_timeout: str | None, cap_s: float = WAIT_CAP_S) -> float:
    """How long a non-stream request waits for its job: the job's timeout (+30 s for queueing) but
    under the SDK default timeout, and under the client's own read timeout when it says so
    (`x-stainless-read-timeout`) and leaves room for an answer (> 2 x the margin)."""
    bound = min(job_timeout_s + 30.0, cap_s)
    try:
        rt = float(read_timeout) if read_timeout else None
    except ValueError:
        rt = None
    if rt is not None and rt == rt and rt > 2 * READ_TIMEOUT_MARGIN_S:
        bound = min(bound, rt - READ_TIMEOUT_MARGIN_S)
    return bound


def is_sdk_retry(retry_count: str | None) -> bool:
    return bool(retry_count) and retry_count.strip() not in ("", "0")


def fingerprint(app_id: str, params: dict[str, Any], auth: str | None, client: str | None) -> str:
    """Identifies "the same request from the same client" across SDK retries."""
    import hashlib

    blob = json.dumps({"app": app_id, "params": params, "auth": auth, "client": client}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()
