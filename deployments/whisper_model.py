"""Entry point for `impl: deployments.whisper_model:Whisper` in serve_config.yaml; the code lives in gpu_orchestrator.models."""

from gpu_orchestrator.models.whisper import Whisper

__all__ = ["Whisper"]
