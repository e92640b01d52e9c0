"""A submit that carries files (the multipart route): every file is checked against the app's
`file` parameters and every param validated before a byte is stored; the files are stored, their
URIs put in the params and granted to the caller; then the job is submitted. A refusal at any step
leaves no file behind."""

from __future__ import annotations

import asyncio
from typing import IO, Any, Awaitable, Callable, Iterable, Mapping, Protocol

from gpu_orchestrator.store.artifacts import content_id
from gpu_orchestrator.core.apps import AppSpec, ParamError, ParamsInvalid, validate_params
from gpu_orchestrator.core.jobs import Job
from gpu_orchestrator.core.keys import OPEN, Caller
from gpu_orchestrator.service.jobs import JobService


class UploadStore(Protocol):
    def put_file(self, src: IO[bytes], *, name: str, prefix: str = ..., id: str | None = None) -> tuple[str, int, bool]: ...
    def delete_many(self, uris: Iterable[str]) -> int: ...


class NoArtifactStore(Exception):
    """503: files were sent to a router built without an artifact store."""


async def submit_with_files(jobs: JobService, artifacts: UploadStore | None, spec: AppSpec, params: dict[str, Any],
                            priority: Any, files: Mapping[str, tuple[str | None, IO[bytes]]],
                            idempotency_key: str | None = None, caller: Caller = OPEN,
                            grant: Callable[[str], Awaitable[None]] | None = None,
                            webhook: str | None = None, webhook_events: list[str] | None = None) -> tuple[Job, bool]:
    """`spec`: the app, from `jobs.runnable_app` (the caller refuses an unknown app, and a caller
    that may not submit to it, before reading the files). `files`: field name -> (the file's name as
    sent, its bytes). (job, created) as JobService.submit."""
    file_params = {p.name for p in spec.parameters if p.type == "file"}
    wrong = [ParamError(f"params.{name}", f"not a file parameter of app {spec.id!r} (file parameters: "
                                          f"{sorted(file_params)})") for name in files if name not in file_params]
    if wrong:
        raise ParamsInvalid(wrong)
    if files and artifacts is None:
        raise NoArtifactStore("this router has no artifact store configured")
    # Everything validated (file formats too, through placeholder URIs) before a byte is stored.
    validate_params(spec, {**params, **{name: f"artifact://pending/{fn or name}" for name, (fn, _) in files.items()}})
    stored: list[str] = []
    params = dict(params)
    try:
        for name, (filename, src) in files.items():
            assert artifacts is not None
            # With an Idempotency-Key, the same file under the same key gets the same URI, so a
            # retried request has the same params and finds its job (not a 409).
            uid = await asyncio.to_thread(content_id, src, spec.id, idempotency_key, name) if idempotency_key else None
            uri, _, created = await asyncio.to_thread(artifacts.put_file, src, prefix="uploads", name=filename or name,
                                                      id=uid)
            if created:
                stored.append(uri)
            if grant is not None:
                await grant(uri)
            params[name] = uri
        return await jobs.submit(spec.id, params, priority, idempotency_key, caller, webhook=webhook,
                                 webhook_events=webhook_events)
    except Exception:  # a refusal: nothing left behind. Not on a cancel: the job may be committed already
        if stored:
            assert artifacts is not None
            await asyncio.to_thread(artifacts.delete_many, stored)
        raise
