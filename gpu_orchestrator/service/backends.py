"""Where the dispatcher sends a job: a ModelBackend per model deployment.

`backend.run(job, attempt, timeout_s=..., queue_timeout_s=...)` starts the job's attempt at once and
returns a ModelRun: await it for the result, `cancel()` it to stop the model's work. Both `run` and
the await raise only core.model_errors types (JobCancelled when the run was cancelled), so the
dispatcher decides by type, whatever the backend. serve/backend.py adapts a Ray Serve handle;
InProcessBackend here runs a model object in this event loop (tests, a Ray-less router).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, Awaitable, Callable, Generator, Protocol

from gpu_orchestrator.core.jobs import Job
from gpu_orchestrator.core.model_errors import JobCancelled, ModelError, as_model_error


class ModelRun(Protocol):
    def __await__(self) -> Generator[Any, None, Any]: ...
    def cancel(self) -> None: ...


class ModelBackend(Protocol):
    def run(self, job: Job, attempt: int, *, timeout_s: float, queue_timeout_s: float) -> ModelRun: ...


Translate = Callable[[BaseException], ModelError]


class StartedRun:
    """A run in progress: `awaitable` gives its result; `cancel` stops it; `translate` turns what it
    raises into a ModelError. Awaiting it twice is fine when `awaitable` is a task or future."""

    def __init__(self, awaitable: Awaitable[Any], cancel: Callable[[], Any], translate: Translate = as_model_error):
        self._awaitable = awaitable
        self._cancel = cancel
        self._translate = translate
        self.cancelled = False  # cancel() was called (tests assert on it)

    def cancel(self) -> None:
        self.cancelled = True
        self._cancel()

    def __await__(self) -> Generator[Any, None, Any]:
        return self._result().__await__()

    async def _result(self) -> Any:
        try:
            return await self._awaitable
        except (asyncio.CancelledError, concurrent.futures.CancelledError):
            if _cancelling():
                raise  # our own caller is being cancelled: let it
            raise JobCancelled("the model request was cancelled") from None
        except Exception as e:
            raise self._translate(e) from e


def _cancelling() -> bool:
    """Whether the current task has been asked to stop (Python 3.11+; before, assume so)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return True if cancelling is None else bool(cancelling())


class RunnableModel(Protocol):
    """What InProcessBackend needs of a model object: a ModelDeployment's `run` (models.base)."""

    def run(self, job_id: str, params: dict[str, Any], attempt: int, *, timeout_s: float,
            queue_timeout_s: float) -> Awaitable[Any]: ...


class InProcessBackend:
    """A model object (a ModelDeployment: `async run(job_id, params, attempt, timeout_s=,
    queue_timeout_s=)`) run as a task in this event loop. `runs` keeps every run started, in order."""

    def __init__(self, model: RunnableModel):
        self.model = model
        self.runs: list[StartedRun] = []

    def run(self, job: Job, attempt: int, *, timeout_s: float, queue_timeout_s: float) -> StartedRun:
        task = asyncio.ensure_future(self.model.run(str(job.id), job.params, attempt, timeout_s=timeout_s,
                                                    queue_timeout_s=queue_timeout_s))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # an aborted run's error is not news
        run = StartedRun(task, task.cancel)
        self.runs.append(run)
        return run

    async def park(self) -> dict[str, Any]:
        return await self.model.park()

    async def wake(self) -> dict[str, Any]:
        return await self.model.wake()


__all__ = ["InProcessBackend", "ModelBackend", "ModelRun", "RunnableModel", "StartedRun"]
