"""GPU Orchestrator: many AI models on shared GPUs, one Ray Serve application.

Rooms (docs/architecture.md): core/ is pure (jobs, apps, config, the arbiter policy); store/ keeps
jobs (Postgres, in-memory); bus/ is Redis (events, heartbeats, decisions); service/ is the job
service, dispatcher and arbiter loop; api/ is the FastAPI app; models/ the model classes; serve/ is
where the application meets Ray; root/ builds the orchestrator from its ports; ops/ is the operator's
tooling (the Ray head `gpu-orch up` starts, the KubeRay manifest, the scaffold) under cli/'s commands.
The client and the CLI import no Ray until a command starts, deploys or stops a stack.
"""

from .client import ApiError, AsyncClient, Client

__all__ = ["Client", "AsyncClient", "ApiError"]
__version__ = "0.1.0"
