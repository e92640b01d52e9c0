"""GPU Orchestrator: many AI models on shared GPUs, one Ray Serve application.

The core library (registry, jobs, store, events, client, CLI) imports no ray.serve.
"""

from .client import ApiError, AsyncClient, Client

__all__ = ["Client", "AsyncClient", "ApiError"]
__version__ = "0.1.0"
