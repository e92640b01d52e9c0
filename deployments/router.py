"""The router deployment (ingress); the code lives in gpu_orchestrator.serve.router."""

from gpu_orchestrator.serve.router import Router, RouterIngress

__all__ = ["Router", "RouterIngress"]
