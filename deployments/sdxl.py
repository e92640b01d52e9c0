"""Entry point for `impl: deployments.sdxl:SDXL` in serve_config.yaml; the code lives in gpu_orchestrator.models."""

from gpu_orchestrator.models.sdxl import SDXL

__all__ = ["SDXL"]
