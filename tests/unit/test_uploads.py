"""A submit with files (service/uploads.py): checked before a byte is stored, stored and granted,
and nothing left behind when the submit is refused afterwards."""

from __future__ import annotations

import asyncio
import io

import pytest

from gpu_orchestrator.store.artifacts import ArtifactStore
from gpu_orchestrator.core.apps import ParamsInvalid
from gpu_orchestrator.core.jobs import InvalidRequest
from gpu_orchestrator.service.uploads import NoArtifactStore, submit_with_files
from tests.unit.test_job_service import Harness


def audio_app(h: Harness):  # the app with a `file` parameter, as the route resolves it
    return h.svc.runnable_app("audio")


def stored_files(root) -> list:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_files_are_stored_granted_and_put_in_the_params(tmp_path):
    h, store = Harness(), ArtifactStore(str(tmp_path))
    h.svc.artifacts = store
    granted: list[str] = []

    async def grant(uri: str) -> None:
        granted.append(uri)

    job, created = asyncio.run(submit_with_files(h.svc, store, audio_app(h), {}, 0, {"audio": ("a.wav", io.BytesIO(b"RIFF"))},
                                                 grant=grant))
    assert created and job.params["audio"] == granted[0] and granted[0].startswith("artifact://")
    assert [p.read_bytes() for p in stored_files(tmp_path)] == [b"RIFF"]


def test_refusals_before_a_byte_is_stored(tmp_path):
    h, store = Harness(), ArtifactStore(str(tmp_path))
    h.svc.artifacts = store
    with pytest.raises(ParamsInvalid) as e:  # a file where the app takes none
        asyncio.run(submit_with_files(h.svc, store, audio_app(h), {}, 0, {"message": ("m.txt", io.BytesIO(b"x"))}))
    assert e.value.errors[0].field == "params.message" and "not a file parameter" in e.value.errors[0].message
    with pytest.raises(NoArtifactStore):
        asyncio.run(submit_with_files(h.svc, None, audio_app(h), {}, 0, {"audio": ("a.wav", io.BytesIO(b"x"))}))
    assert stored_files(tmp_path) == []


def test_a_submit_refused_after_the_files_were_stored_leaves_none(tmp_path):
    h, store = Harness(), ArtifactStore(str(tmp_path))
    h.svc.artifacts = store
    with pytest.raises(InvalidRequest) as e:  # the priority's range is the service's check, after the upload
        asyncio.run(submit_with_files(h.svc, store, audio_app(h), {}, 10**9, {"audio": ("a.wav", io.BytesIO(b"RIFF"))}))
    assert e.value.field == "priority"
    assert stored_files(tmp_path) == []
