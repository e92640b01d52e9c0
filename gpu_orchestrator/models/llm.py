"""`llm`: chat completion. vLLM engine on GPU (streaming tokens); a transformers engine on CPU, so the
same deployment runs everywhere. Each generated piece of text is published as a `token` progress
event; the final text is the job's result.

init: model (hub id or local path), engine: auto | vllm | transformers, demo (build a tiny
untrained model locally instead), max_model_len (vLLM), dtype.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

from .base import JobCancelled, JobContext, ModelDeployment


class LLM(ModelDeployment):
    model_name = "llm"

    def __init__(self, *, model: str | None = None, engine: str = "auto", demo: bool = False, tiny_path: str | None = None,
                 max_model_len: int = 8192, dtype: str = "auto", redis_url: str | None = None, vram_gb: float = 0.0):
        if not model and not demo:
            raise ValueError("llm: set `model` (a hub id or a local path), or `demo: true` for a tiny untrained model")
        self.model_id, self.demo, self.tiny_path = model, demo, tiny_path
        self.engine_name, self.max_model_len, self.dtype = engine, max_model_len, dtype
        super().__init__(redis_url=redis_url, vram_gb=vram_gb)

    def load(self) -> None:
        import torch

        path = self.model_id
        if self.demo:
            from .builders import build_tiny_llm

            path = str(build_tiny_llm(self.tiny_path))
        engine = self.engine_name
        if engine == "auto":
            engine = "vllm" if torch.cuda.is_available() and _has("vllm") else "transformers"
        self.engine = engine
        if engine == "vllm":
            # The async engine: tokens stream as they are generated, and concurrent jobs on this
            # replica are batched together by vLLM (continuous batching).
            from vllm import AsyncEngineArgs
            from vllm.engine.async_llm_engine import AsyncLLMEngine

            gpu_gb = _gpu_gb()
            util = min(self.declared_vram_gb / gpu_gb if self.declared_vram_gb else 0.9, 0.95)
            self.vllm = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(
                model=path, max_model_len=self.max_model_len, dtype=self.dtype, gpu_memory_utilization=util,
                enable_sleep_mode=True))  # the warm tier parks it with sleep(level=1)
            # vLLM's engine core is another process: this one's torch allocator holds none of it.
            # It takes exactly its share of the GPU (weights + KV cache), so report that.
            self.vllm_reserved_gb = util * gpu_gb
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(path)
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(path)
            device = "cuda" if torch.cuda.is_available() else "cpu"
            dtype = torch.float16 if device == "cuda" else torch.float32
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
            self.device = device
            # transformers samples from torch's process-wide RNG: a seeded job repeats only if no
            # other generation draws from it meanwhile, so this engine runs one job at a time (the
            # base's slots: later jobs wait, saying so, within their queue timeout).
            self.max_concurrent = 1

    # The warm tier. vLLM: sleep level 1 (weights to host memory, KV cache dropped), wake_up back.
    # transformers: the model object stays, its tensors move (base.py, parking.py).
    def parked_modules(self) -> list[Any]:
        return [self.model]

    def offload(self) -> float:
        if self.engine != "vllm":
            return super().offload()
        asyncio.run_coroutine_threadsafe(self.vllm.sleep(level=1), self._loop).result()
        # Level 1 keeps the weights only; the declared figure (weights + KV cache) bounds them.
        return float(self.declared_vram_gb)

    def onload(self) -> None:
        if self.engine != "vllm":
            return super().onload()
        asyncio.run_coroutine_threadsafe(self.vllm.wake_up(), self._loop).result()

    def unload(self) -> None:
        engine = getattr(self, "vllm", None)
        if engine is not None and hasattr(engine, "shutdown"):
            engine.shutdown()  # its engine-core process holds the GPU memory, not this one
        self.model = self.vllm = None

    def info(self) -> dict[str, Any]:
        out = super().info()
        if getattr(self, "engine", None) == "vllm":
            out["vram_held_gb"] = self.vllm_reserved_gb
        return out

    async def infer(self, params: dict[str, Any], ctx: JobContext) -> Any:
        prompt = self.tokenizer.apply_chat_template(params["messages"], tokenize=False, add_generation_prompt=True)
        max_tokens = int(params.get("max_tokens", 128))
        temperature = float(params.get("temperature", 0.7))
        # At least this many tokens (end-of-sequence suppressed before): benchmarks, fixed-length load.
        min_tokens = min(int(params.get("min_tokens") or 0), max_tokens)
        seed = params.get("seed")
        t0 = time.perf_counter()
        pieces: list[str] = []
        if self.engine == "vllm":
            finish, n_tokens = await self._vllm(prompt, max_tokens, min_tokens, temperature, seed, ctx, pieces)
        else:
            finish, n_tokens = await asyncio.to_thread(self._transformers, prompt, max_tokens, min_tokens, temperature,
                                                       seed, ctx, pieces)
        text = "".join(pieces)
        n_prompt = len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        out = {"text": text, "finish_reason": finish, "prompt_tokens": n_prompt, "completion_tokens": n_tokens,
               "engine": self.engine,
               "model": self.model_id or "tiny-llm", "seconds": round(time.perf_counter() - t0, 4)}
        if self.demo:
            out["untrained"] = True  # tiny random weights: the text is noise
        return out

    def _transformers(self, prompt, max_tokens, min_tokens, temperature, seed, ctx, pieces) -> str:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):  # checked between tokens
                return ctx.cancelled()

        inputs = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        if seed is not None:
            torch.manual_seed(int(seed))
        kw = dict(inputs, max_new_tokens=max_tokens, min_new_tokens=min_tokens, streamer=streamer,
                  pad_token_id=self.tokenizer.pad_token_id,
                  stopping_criteria=StoppingCriteriaList([Cancelled()]))
        kw.update(do_sample=True, temperature=temperature) if temperature > 0 else kw.update(do_sample=False)
        result: dict[str, Any] = {}

        def run():
            try:
                result["out"] = self.model.generate(**kw)
            except Exception as e:  # surfaced below, in the job's thread
                result["error"] = e
                streamer.on_finalized_text("", stream_end=True)

        th = threading.Thread(target=run, daemon=True)
        th.start()
        for piece in streamer:
            if piece:
                pieces.append(piece)
                ctx.progress(token=piece, index=len(pieces) - 1)
        th.join()
        if "error" in result:
            raise result["error"]
        ctx.check_cancelled()
        generated = result["out"].shape[1] - inputs["input_ids"].shape[1]
        return ("length" if generated >= max_tokens else "stop"), int(generated)

    async def _vllm(self, prompt, max_tokens, min_tokens, temperature, seed, ctx, pieces) -> tuple[str, int]:
        from vllm import SamplingParams

        sp = SamplingParams(max_tokens=max_tokens, min_tokens=min_tokens, temperature=temperature, seed=seed)
        request_id = f"{ctx.job_id}-{ctx.attempt}-{uuid.uuid4().hex[:8]}"
        sent, out = 0, None
        try:
            # Each output carries the cumulative text; publish what is new since the last one.
            async for res in self.vllm.generate(prompt, sp, request_id):
                out = res.outputs[0]
                if len(out.text) > sent:
                    piece = out.text[sent:]
                    sent = len(out.text)
                    pieces.append(piece)
                    ctx.progress(token=piece, index=len(pieces) - 1)
                if ctx.cancelled():
                    break
        finally:
            if out is None or not out.finish_reason:
                await self.vllm.abort(request_id)  # cancelled (or the job's task was): free the KV cache
        ctx.check_cancelled()
        return (out.finish_reason if out else None) or "stop", len(out.token_ids) if out else 0


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _gpu_gb() -> float:
    import torch

    return torch.cuda.get_device_properties(0).total_memory / 2**30


__all__ = ["LLM", "JobCancelled"]
