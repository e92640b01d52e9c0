"""Entry point for `impl: deployments.llm:LLM` in serve_config.yaml; the code lives in gpu_orchestrator.models."""

from gpu_orchestrator.models.llm import LLM

__all__ = ["LLM"]
