"""Entry point for `impl: deployments.echo:Echo` in serve_config.yaml; the code lives in gpu_orchestrator.models."""

from gpu_orchestrator.models.echo import Echo

__all__ = ["Echo"]
