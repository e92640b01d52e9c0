"""`sdxl`: Stable Diffusion XL text-to-image (diffusers `StableDiffusionXLPipeline.from_pretrained`),
fp16 on CUDA, fp32 on CPU. init: model (hub id or local path), variant ("fp16" for the half-size
files), dtype, cpu_offload, demo (a tiny untrained SDXL built locally). Width/height: multiples of 8.
"""

from __future__ import annotations

from .diffusion import DiffusionModel


class SDXL(DiffusionModel):
    model_name = "sdxl"
    pipeline_class = "StableDiffusionXLPipeline"
    cuda_dtype = "float16"
    default_steps = 30
    default_guidance = 5.0
