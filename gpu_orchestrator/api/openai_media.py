"""OpenAI's image and audio routes over the image and transcription apps: /v1/images/generations
(SDXL, Z-Image: `url` or `b64_json`), /v1/audio/transcriptions and /v1/audio/translations (Whisper:
json, text, srt, verbose_json, vtt). Each request is a job (api/openai.py: retries, cancel on
disconnect, keys and quotas)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from gpu_orchestrator.api import openai_format as oai
from gpu_orchestrator.api.deps import Artifacts, AuthDep, CallerDep, IdempotencyKey, Jobs
from gpu_orchestrator.api.errors import ApiError
from gpu_orchestrator.api.openai import finished, job_for, resolve
from gpu_orchestrator.service.uploads import submit_with_files

router = APIRouter(tags=["openai"])
# Bodies under Limits.max_upload_bytes (audio files), as the other upload routes.
UPLOAD_PATHS = ("/v1/audio/transcriptions", "/v1/audio/translations")


@router.post("/v1/images/generations")
async def images(req: oai.ImageRequest, request: Request, jobs: Jobs, artifacts: Artifacts, caller: CallerDep,
                 idempotency_key: IdempotencyKey = None) -> Any:
    spec = resolve(jobs, req.model, "image")
    try:
        params = req.job_params()
    except ValueError as e:
        raise ApiError(422, "invalid_request", str(e), field="size") from None
    job = await job_for(jobs, spec, params, request, idempotency_key, caller, names=oai.IMAGE_FIELDS)
    done = await finished(jobs, spec, job, request)
    data = []
    for img in (done.result or {}).get("images") or ():
        if req.response_format == "b64_json":
            if artifacts is None:
                raise ApiError(503, "no_artifact_store", "this router has no artifact store to read the image from")
            raw = await asyncio.to_thread(artifacts.read, img["artifact"])
            data.append({"b64_json": base64.b64encode(raw).decode()})
        else:  # where this router serves it (GET /v1/artifacts/..., with the same key)
            data.append({"url": str(request.base_url).rstrip("/") + img["url"]})
    return {"created": int(time.time()), "data": data}


@router.post("/v1/audio/transcriptions")
async def transcriptions(request: Request, jobs: Jobs, artifacts: Artifacts, caller: CallerDep, auth: AuthDep,
                         idempotency_key: IdempotencyKey = None) -> Any:
    """multipart/form-data as OpenAI's: file, model, language, response_format (json, text, srt,
    verbose_json, vtt); prompt and temperature are accepted and not used."""
    return await _audio(request, jobs, artifacts, caller, auth, idempotency_key, "transcribe")


@router.post("/v1/audio/translations")
async def translations(request: Request, jobs: Jobs, artifacts: Artifacts, caller: CallerDep, auth: AuthDep,
                       idempotency_key: IdempotencyKey = None) -> Any:
    """As transcriptions, into English (the app's `task: translate`)."""
    return await _audio(request, jobs, artifacts, caller, auth, idempotency_key, "translate")


async def _audio(request: Request, jobs: Any, artifacts: Any, caller: Any, auth: Any, key: str | None,
                 task: str) -> Response:
    form = await request.form(max_files=1, max_fields=16)
    model = form.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(422, "invalid_request", "required: the model id (GET /v1/models)", field="model")
    spec = resolve(jobs, model, "transcription")
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise ApiError(422, "invalid_request", "required: the audio file to transcribe", field="file")
    fmt = form.get("response_format") or "json"
    if fmt not in oai.TRANSCRIPT_FORMATS:
        raise ApiError(422, "invalid_request", f"must be one of {list(oai.TRANSCRIPT_FORMATS)}", field="response_format")
    file_param = next((p.name for p in spec.parameters if p.type == "file"), None)
    if file_param is None:
        raise ApiError(422, "invalid_request", f"app {spec.id!r} takes no file", field="model")
    params: dict[str, Any] = {}
    language = form.get("language")
    if isinstance(language, str) and language:
        params["language"] = language
    task_param = spec.param("task")  # Whisper's: transcribe | translate
    if task_param is not None and task in (task_param.choices or ()):
        params["task"] = task
    elif task == "translate":
        raise ApiError(422, "invalid_request", f"app {spec.id!r} does not translate", field="model")
    caller.require_app(spec.id)  # before a byte is stored
    digest = await asyncio.to_thread(_digest, upload.file)

    async def submit(k: str | None) -> Any:
        job, _ = await submit_with_files(jobs, artifacts, spec, params, 0, {file_param: (upload.filename, upload.file)},
                                         k, caller, grant=lambda uri: auth.uploaded(caller, uri))
        return job

    job = await job_for(jobs, spec, params, request, key, caller, submit=submit,
                        fingerprint_params={**params, "file": digest}, names={file_param: "file"})
    done = await finished(jobs, spec, job, request)
    media, content = oai.transcript(done.result or {}, fmt, task)
    if media == "application/json":
        return JSONResponse(content)
    return Response(content, media_type=media)


def _digest(f: Any) -> str:
    h = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    f.seek(0)
    return h.hexdigest()
