"""The dispatcher's ModelBackend over a Ray Serve deployment handle: the one place Ray's error
wrappers are read.

A model's exception reaches the router as a RayTaskError whose `cause` is the original (JobTimeout,
ModelLoadError, a ValueError from the model's code); a dead replica as a RayActorError; a cancelled
request as RequestCancelledError / TaskCancelledError (or a CancelledError inside the task). `from_ray`
turns each into a core.model_errors type, so nothing past here needs to know Ray.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

import ray.exceptions
import ray.serve.exceptions

from gpu_orchestrator.core.jobs import Job
from gpu_orchestrator.core.model_errors import JobCancelled, ModelError, ModelFailed, ReplicaDied
from gpu_orchestrator.service.backends import StartedRun

_CANCELLED = (JobCancelled, ray.serve.exceptions.RequestCancelledError, ray.serve.exceptions.TaskCancelledError,
              ray.exceptions.TaskCancelledError, asyncio.CancelledError, concurrent.futures.CancelledError)
_REPLICA_DIED = (ray.exceptions.RayActorError,)  # ActorDiedError, ActorUnavailableError


def from_ray(exc: BaseException) -> ModelError:
    """The model error that `exc`, as a Serve call raised it, stands for."""
    cause = getattr(exc, "cause", None)
    inner = cause if isinstance(cause, BaseException) and cause is not exc else exc
    if isinstance(exc, _CANCELLED) or isinstance(inner, _CANCELLED):
        return inner if isinstance(inner, JobCancelled) else JobCancelled(str(inner))
    if isinstance(inner, ModelError):
        return inner  # raised by the model (JobTimeout, SlotTimeout, ModelLoadError ...), unwrapped
    if isinstance(exc, _REPLICA_DIED) or isinstance(inner, _REPLICA_DIED):
        return ReplicaDied.of(inner)  # charged: the job may be what crashed it
    return ModelFailed.of(inner)


class ServeBackend:
    """Runs jobs on a model deployment through its DeploymentHandle (`run.remote(job_id, params,
    attempt, timeout_s=, queue_timeout_s=)`, see models/base.py); `by_value`: router.model_calls grpc."""

    def __init__(self, handle: Any, *, by_value: bool = False):
        self.handle = handle
        # By value: Serve's gRPC between replicas (an unary call, no ObjectRef to own, resolve and
        # free per job); its errors come back as on the actor path (serve/_private/replica_result).
        self._runs = handle.options(_by_reference=False) if by_value else handle

    def run(self, job: Job, attempt: int, *, timeout_s: float, queue_timeout_s: float) -> StartedRun:
        try:
            response = self._runs.run.remote(str(job.id), job.params, attempt, timeout_s=timeout_s,
                                              queue_timeout_s=queue_timeout_s)
        except Exception as e:  # e.g. the deployment is gone: a failed attempt like any other
            raise from_ray(e) from e
        # Cancelling the response raises CancelledError inside the model replica's request.
        return StartedRun(response, response.cancel, from_ray)

    # The warm tier (service/arbiter/warm.py): the arbiter's leader parks and wakes the replica.
    async def park(self) -> dict[str, Any]:
        return await self.handle.park.remote()

    async def wake(self) -> dict[str, Any]:
        return await self.handle.wake.remote()


__all__ = ["ServeBackend", "from_ray"]
