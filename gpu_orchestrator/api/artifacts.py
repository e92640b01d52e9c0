"""/v1/artifacts: upload a file for a `file` parameter; download generated or uploaded files."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, File, UploadFile
from fastapi.responses import FileResponse, Response, StreamingResponse

from gpu_orchestrator.api.deps import Artifacts, AuthDep, CallerDep
from gpu_orchestrator.api.errors import ApiError
from gpu_orchestrator.store.artifacts import ArtifactError, http_path, serve_headers
from gpu_orchestrator.core.keys import Scope

router = APIRouter(tags=["artifacts"])
UPLOAD_PATHS = ("/v1/artifacts", "/v1/jobs/multipart")  # bodies under Limits.max_upload_bytes


@router.post("/v1/artifacts", status_code=201)
async def upload(artifacts: Artifacts, caller: CallerDep, auth: AuthDep, file: UploadFile = File(...)) -> dict[str, Any]:
    """Store a file (audio, image) for use as a `file` parameter; returns its artifact URI. The key
    that uploads it may read it back (and submit it); other keys get a 404."""
    caller.require(Scope.submit)
    if artifacts is None:
        raise ApiError(503, "no_artifact_store", "this router has no artifact store configured")
    # The multipart parser spooled the upload to a temporary file; it is copied in chunks.
    uri, size, _ = await asyncio.to_thread(artifacts.put_file, file.file, name=file.filename or "file", prefix="uploads")
    await auth.uploaded(caller, uri)
    return {"artifact": uri, "url": http_path(uri), "size": size, "content_type": file.content_type}


@router.get("/v1/artifacts/{key:path}")
async def download(key: str, artifacts: Artifacts, caller: CallerDep, auth: AuthDep) -> Response:
    """An artifact's bytes, streamed. Generated images/audio inline; uploads and any other type as
    attachments, always with X-Content-Type-Options: nosniff. Visible as its job is: to the key
    whose job made it (or that uploaded it) and to keys with read:all; others get a 404."""
    caller.require(Scope.read)
    if artifacts is None:
        raise ApiError(404, "not_found", "no artifact store configured")
    uri = "artifact://" + key
    if not await auth.may_read_artifact(caller, uri):
        raise ApiError(404, "artifact_not_found", f"no artifact {uri}", field="key")
    try:
        size = await asyncio.to_thread(artifacts.size, uri)
    except ArtifactError as e:  # not found on any backend, or not a valid key
        raise ApiError(404, "artifact_not_found", str(e), field="key") from None
    ctype, headers = serve_headers(artifacts.key(uri), artifacts.content_type(uri))
    if artifacts.local:
        return FileResponse(artifacts.root / artifacts.key(uri), media_type=ctype, headers=headers)
    headers["Content-Length"] = str(size)
    return StreamingResponse(artifacts.iter_chunks(uri), media_type=ctype, headers=headers)
