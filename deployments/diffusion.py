"""Old import path of the diffusers base model class; the code lives in gpu_orchestrator.models.diffusion."""

from gpu_orchestrator.models.diffusion import DiffusionModel

__all__ = ["DiffusionModel"]
