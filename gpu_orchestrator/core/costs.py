"""What a job cost: GPU-seconds and dollars, local or cloud. Pure: price tables and arithmetic.

Default prices are public list prices (source and date beside each table), overridable in config
(`costs:` in the orchestrator's args). Local GPUs default to what the same GPU costs on Modal, so
"local vs cloud" compares like for like until you set what your own hardware costs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# https://replicate.com/pricing (hardware, per second), as of 2026-11.
REPLICATE_HARDWARE_PER_S = {
    "cpu": 0.000100, "gpu-t4": 0.000225, "gpu-l40s": 0.000975, "gpu-a100-large": 0.001400,
    "gpu-h100": 0.001525,
}
# https://modal.com/pricing (GPU, per second), as of 2026-11.
MODAL_GPU_PER_S = {
    "T4": 0.000164, "L4": 0.000222, "A10G": 0.000306, "L40S": 0.000542, "A100-40GB": 0.000583,
    "A100-80GB": 0.000694, "H100": 0.001097,
}
PRICES_SOURCE = "replicate.com/pricing and modal.com/pricing, list prices as of 2026-11"


class Pricing(BaseModel):
    """How a provider bills one prediction. per_second: predict time x `hardware`'s rate;
    per_token: input and output token counts (from the provider's metrics); per_image: images out."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["per_second", "per_token", "per_image"] = "per_second"
    hardware: str | None = None  # per_second: a key of the provider's hardware table
    per_input_token: float = Field(default=0.0, ge=0)
    per_output_token: float = Field(default=0.0, ge=0)
    per_image: float = Field(default=0.0, ge=0)


class CostsSpec(BaseModel):
    """Price tables ($ per second) and local GPU rates ($ per GPU-hour by GPU type)."""

    model_config = ConfigDict(extra="forbid")

    replicate_per_s: dict[str, float] = Field(default_factory=lambda: dict(REPLICATE_HARDWARE_PER_S))
    modal_per_s: dict[str, float] = Field(default_factory=lambda: dict(MODAL_GPU_PER_S))
    local_per_gpu_hour: dict[str, float] = Field(
        default_factory=lambda: {k: round(v * 3600, 4) for k, v in MODAL_GPU_PER_S.items()})
    # The GPU type of a model that names none (models.<name>.gpu_type).
    local_gpu_type: str = "L4"
    source: str = PRICES_SOURCE


def local_cost(seconds: float, num_gpus: float, gpu_type: str | None, costs: CostsSpec) -> tuple[float, float]:
    """(GPU-seconds, dollars) for a local run: its wall seconds times the GPU share it holds."""
    gpu_s = max(0.0, seconds) * num_gpus
    rate = costs.local_per_gpu_hour.get(gpu_type or costs.local_gpu_type, 0.0)
    return gpu_s, gpu_s * rate / 3600.0


def replicate_cost(pricing: Pricing, metrics: dict[str, Any], images: int, costs: CostsSpec) -> tuple[float, float]:
    """(GPU-seconds, dollars) from a finished prediction's metrics (predict_time, token counts)."""
    seconds = float(metrics.get("predict_time") or 0.0)
    if pricing.mode == "per_token":
        tokens_in = float(metrics.get("input_token_count") or 0)
        tokens_out = float(metrics.get("output_token_count") or 0)
        return seconds, tokens_in * pricing.per_input_token + tokens_out * pricing.per_output_token
    if pricing.mode == "per_image":
        return seconds, images * pricing.per_image
    return seconds, seconds * costs.replicate_per_s.get(pricing.hardware or "", 0.0)


def modal_cost(seconds: float, gpu: str | None, costs: CostsSpec) -> tuple[float, float]:
    return seconds, max(0.0, seconds) * costs.modal_per_s.get(gpu or "", 0.0)


def estimate_cloud_cost(backend: str, pricing: Pricing, gpu: str | None, seconds: float, images: int,
                        tokens_out: int, costs: CostsSpec) -> float:
    """Before sending a job: what it would cost, from the expected run time, images or tokens."""
    if backend == "modal":
        return modal_cost(seconds, gpu, costs)[1]
    if pricing.mode == "per_token":
        return tokens_out * pricing.per_output_token
    if pricing.mode == "per_image":
        return images * pricing.per_image
    return seconds * costs.replicate_per_s.get(pricing.hardware or "", 0.0)
