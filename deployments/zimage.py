"""Entry point for `impl: deployments.zimage:ZImage` in serve_config.yaml; the code lives in gpu_orchestrator.models."""

from gpu_orchestrator.models.zimage import ZImage

__all__ = ["ZImage"]
