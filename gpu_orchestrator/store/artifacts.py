"""The artifact store: large job inputs and outputs (uploaded audio, generated images) live here and
job rows keep their `artifact://` URIs. A local directory by default; any fsspec URL (s3://,
gs://, memory://, ...) in production, when fsspec and its backend are installed.

Bytes move in chunks (`put_file`, `iter_chunks`): an upload or a download never sits whole in the
router's memory.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import IO, Iterable, Iterator

from gpu_orchestrator.core.artifact_refs import SCHEME

log = logging.getLogger("gpu_orchestrator.store.artifacts")
CHUNK = 1024 * 1024
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
UPLOADS = "uploads"
# Served inline: media a browser renders without running anything. Everything else (HTML, SVG,
# XML, JavaScript, unknown types) and every user upload is served as an attachment.
INLINE_TYPES = frozenset({
    "image/png", "image/jpeg", "image/webp", "image/gif", "image/avif",
    "audio/wav", "audio/x-wav", "audio/wave", "audio/mpeg", "audio/flac", "audio/x-flac", "audio/ogg",
    "audio/mp4", "audio/aac", "audio/webm", "audio/opus", "video/mp4", "video/webm",
})
# Kept as is but downloaded: text a browser shows without running it (with nosniff).
PLAIN_TYPES = frozenset({"text/plain", "application/json"})


# The served types, from the system's mime.types and Python's defaults only: the module-level table
# is process-wide and other libraries loaded in the same process rewrite it (Gradio maps .wav to
# audio/wav), which would change what the API answers.
_TYPES = mimetypes.MimeTypes(filenames=[f for f in mimetypes.knownfiles if os.path.isfile(f)])


class ArtifactError(ValueError):
    pass


class ArtifactNotFound(ArtifactError):
    def __init__(self, uri: str):
        super().__init__(f"artifact {uri} not found")
        self.uri = uri


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

    def put(self, data: bytes, *, name: str, prefix: str = UPLOADS) -> str:
        """Store bytes; returns the artifact URI (artifact://<prefix>/<id>/<name>)."""
        import io

        return self.put_file(io.BytesIO(data), name=name, prefix=prefix)[0]

    def put_file(self, src: IO[bytes], *, name: str, prefix: str = UPLOADS, id: str | None = None) -> tuple[str, int, bool]:
        """Store a file object's bytes, copied in chunks; returns (artifact URI, size, created).

        `id` names the artifact's directory (default: a random one). With a given id, an artifact
        already stored under it is kept as is and `created` is False: a retried upload with the
        same content (see content_id) maps to the same URI."""
        key = f"{safe_name(prefix)}/{safe_name(id) if id else uuid.uuid4().hex}/{safe_name(name)}"
        if id and self.exists(SCHEME + key):
            return SCHEME + key, self.size(SCHEME + key), False
        size = 0
        if self.local:
            path = self.root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + f".{uuid.uuid4().hex[:8]}.part")
            try:
                with tmp.open("wb") as f:
                    size = _copy(src, f)
                tmp.replace(path)  # readers never see a half-written file
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        else:
            with self.fs.open(f"{self.base}/{key}", "wb") as f:
                size = _copy(src, f)
        return SCHEME + key, size, True

    def key(self, uri: str) -> str:
        if not uri.startswith(SCHEME):
            raise ArtifactError(f"not an artifact URI: {uri!r} (expected {SCHEME}...)")
        key = uri[len(SCHEME):]
        if ".." in key.split("/") or key.startswith("/") or "\x00" in key or "\\" in key:
            raise ArtifactError(f"invalid artifact key: {key!r}")
        return key

    def exists(self, uri: str) -> bool:
        key = self.key(uri)
        return (self.root / key).is_file() if self.local else self.fs.isfile(f"{self.base}/{key}")

    def size(self, uri: str) -> int:
        """The artifact's size in bytes; ArtifactNotFound from every backend when it is missing."""
        key = self.key(uri)
        try:
            if self.local:
                return self._local_file(uri, key).stat().st_size
            if not self.fs.isfile(f"{self.base}/{key}"):
                raise ArtifactNotFound(uri)
            return int(self.fs.size(f"{self.base}/{key}"))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ArtifactNotFound(uri) from None

    def _local_file(self, uri: str, key: str) -> Path:
        path = self.root / key
        if not path.is_file():
            raise ArtifactNotFound(uri)
        return path

    def open(self, uri: str) -> IO[bytes]:
        key = self.key(uri)
        try:
            if self.local:
                return self._local_file(uri, key).open("rb")
            return self.fs.open(f"{self.base}/{key}", "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ArtifactNotFound(uri) from None

    def iter_chunks(self, uri: str, chunk: int = CHUNK) -> Iterator[bytes]:
        with self.open(uri) as f:
            while data := f.read(chunk):
                yield data

    def read(self, uri: str) -> bytes:
        with self.open(uri) as f:
            return f.read()

    def delete(self, uri: str) -> None:
        """Remove an artifact (and its per-upload directory); a missing one is not an error."""
        key = self.key(uri)
        if self.local:
            shutil.rmtree((self.root / key).parent, ignore_errors=True)
            return
        try:
            self.fs.rm(f"{self.base}/{key}")
        except FileNotFoundError:
            pass

    def delete_many(self, uris: Iterable[str]) -> int:
        """Best effort: remove each artifact, logging what could not be removed (the caller has
        moved on: a refused submit, a pruned job). Returns how many went."""
        gone = 0
        for uri in uris:
            try:
                self.delete(uri)
                gone += 1
            except Exception as e:  # an orphan file, not a broken job
                log.warning("artifact %s not removed: %s", uri, e)
        return gone

    def local_path(self, uri: str) -> Path:
        """A local file with the artifact's bytes (the file itself for a local store)."""
        if self.local:
            path = self.root / self.key(uri)
            if not path.is_file():
                raise ArtifactNotFound(uri)
            return path
        tmp = Path(tempfile.mkdtemp(prefix="gpu-orch-artifact-")) / safe_name(self.key(uri).rsplit("/", 1)[-1])
        with self.open(uri) as src, tmp.open("wb") as dst:
            _copy(src, dst)
        return tmp

    def content_type(self, uri: str) -> str:
        return _TYPES.guess_type(self.key(uri))[0] or "application/octet-stream"

    def cleanup_tmp(self, path: Path) -> None:
        if not self.local:
            shutil.rmtree(path.parent, ignore_errors=True)


def content_id(src: IO[bytes], *scope: str) -> str:
    """A directory id from a file's bytes (read in chunks, then rewound) and a scope (app, key, field)."""
    import hashlib

    h = hashlib.sha256("\0".join(scope).encode("utf-8", "surrogatepass"))
    while data := src.read(CHUNK):
        h.update(data)
    src.seek(0)
    return h.hexdigest()[:32]


def _copy(src: IO[bytes], dst: IO[bytes]) -> int:
    n = 0
    while data := src.read(CHUNK):
        dst.write(data)
        n += len(data)
    return n


def serve_headers(key: str, guessed_type: str) -> tuple[str, dict[str, str]]:
    """(Content-Type, headers) for serving an artifact over HTTP. Pure.

    Against stored XSS: always `nosniff`; only generated media (PNG, JPEG, WAV, ...) is inline.
    User uploads and every other type are attachments, and any type that can run script or that
    we do not know (text/html, image/svg+xml, application/xhtml+xml, text/xml, JavaScript, ...) is
    sent as application/octet-stream, so a browser downloads it instead of rendering it here."""
    ctype = guessed_type.split(";")[0].strip().lower()
    if ctype not in INLINE_TYPES and ctype not in PLAIN_TYPES:
        ctype = "application/octet-stream"
    inline = ctype in INLINE_TYPES and not key.startswith(UPLOADS + "/")
    name = safe_name(key.rsplit("/", 1)[-1])
    return ctype, {
        "X-Content-Type-Options": "nosniff",
        "Content-Disposition": f'{"inline" if inline else "attachment"}; filename="{name}"',
    }


def http_path(uri: str) -> str:
    """Where the router serves an artifact over HTTP."""
    return "/v1/artifacts/" + uri[len(SCHEME):]
