"""The artifact store: large job inputs and outputs (uploaded audio, generated images) live here and
job rows keep their `artifact://` URIs. A local directory by default; any fsspec URL (s3://,
gs://, ...) in production, when fsspec and its backend are installed.
"""

from __future__ import annotations

import mimetypes
import re
import shutil
import tempfile
import uuid
from pathlib import Path

SCHEME = "artifact://"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class ArtifactError(ValueError):
    pass


def safe_name(name: str) -> str:
    base = Path(name or "file").name
    return (_SAFE.sub("_", base).strip("._") or "file")[:120]


class ArtifactStore:
    def __init__(self, root: str | Path):
        root = str(root)
        self.local = "://" not in root or root.startswith("file://")
        if self.local:
            self.root = Path(root.removeprefix("file://")).expanduser().resolve()
            self.root.mkdir(parents=True, exist_ok=True)
            self.fs = None
        else:
            import fsspec  # optional: only for remote stores

            self.fs, self.base = fsspec.core.url_to_fs(root)
            self.root = None

    def put(self, data: bytes, *, name: str, prefix: str = "uploads") -> str:
        """Store bytes; returns the artifact URI (artifact://<prefix>/<id>/<name>)."""
        key = f"{safe_name(prefix)}/{uuid.uuid4().hex}/{safe_name(name)}"
        if self.local:
            path = self.root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".part")
            tmp.write_bytes(data)
            tmp.replace(path)  # readers never see a half-written file
        else:
            with self.fs.open(f"{self.base}/{key}", "wb") as f:
                f.write(data)
        return SCHEME + key

    def key(self, uri: str) -> str:
        if not uri.startswith(SCHEME):
            raise ArtifactError(f"not an artifact URI: {uri!r} (expected {SCHEME}...)")
        key = uri[len(SCHEME):]
        if ".." in key.split("/") or key.startswith("/"):
            raise ArtifactError(f"invalid artifact key: {key!r}")
        return key

    def exists(self, uri: str) -> bool:
        key = self.key(uri)
        return (self.root / key).is_file() if self.local else self.fs.exists(f"{self.base}/{key}")

    def read(self, uri: str) -> bytes:
        key = self.key(uri)
        if self.local:
            path = self.root / key
            if not path.is_file():
                raise ArtifactError(f"artifact {uri} not found")
            return path.read_bytes()
        with self.fs.open(f"{self.base}/{key}", "rb") as f:
            return f.read()

    def local_path(self, uri: str) -> Path:
        """A local file with the artifact's bytes (the file itself for a local store)."""
        if self.local:
            path = self.root / self.key(uri)
            if not path.is_file():
                raise ArtifactError(f"artifact {uri} not found")
            return path
        tmp = Path(tempfile.mkdtemp(prefix="gpu-orch-artifact-")) / safe_name(self.key(uri).rsplit("/", 1)[-1])
        tmp.write_bytes(self.read(uri))
        return tmp

    def content_type(self, uri: str) -> str:
        return mimetypes.guess_type(self.key(uri))[0] or "application/octet-stream"

    def cleanup_tmp(self, path: Path) -> None:
        if not self.local:
            shutil.rmtree(path.parent, ignore_errors=True)


def http_path(uri: str) -> str:
    """Where the router serves an artifact over HTTP."""
    return "/v1/artifacts/" + uri[len(SCHEME):]
