"""`zimage`: Z-Image-Turbo text-to-image (diffusers `ZImagePipeline.from_pretrained`), bf16 on CUDA,
fp32 on CPU. Turbo defaults: 9 steps, guidance 0 (distilled; a negative prompt only matters with
guidance > 1). Width/height: multiples of 16 (8x VAE, then 2x2 patches).
"""

from __future__ import annotations

from typing import Any

from .diffusion import DiffusionModel


class ZImage(DiffusionModel):
    model_name = "zimage"
    pipeline_class = "ZImagePipeline"
    cuda_dtype = "bfloat16"
    default_steps = 9
    default_guidance = 0.0

    def pipeline_kwargs(self, params: dict[str, Any]) -> dict[str, Any]:
        kw = super().pipeline_kwargs(params)
        if kw["guidance_scale"] <= 1:
            kw.pop("negative_prompt", None)  # no classifier-free guidance: it would be ignored
        return kw
