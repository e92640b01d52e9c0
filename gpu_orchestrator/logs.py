"""The project's logging: every record about a job carries its job_id (and attempt), so one job can
be followed across the router and the model replica that ran it; `log_format: json` in the config
(GPU_ORCH_LOG_FORMAT in model replicas) writes one JSON object per line.

The job is a context variable, set where work on one job starts (the dispatcher's run of an
attempt, the model replica's run, a submit or cancel): asyncio tasks copy it, so everything they log
carries it without passing ids around. A record that names another job (`extra={"job_id": ...}`)
keeps its own.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import os
import sys
import uuid
from typing import Any

ROOT = "gpu_orchestrator"
job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)
attempt: contextvars.ContextVar[int | None] = contextvars.ContextVar("attempt", default=None)
TEXT = "%(asctime)s %(levelname)s %(name)s%(job)s: %(message)s"


def set_job(jid: uuid.UUID | str, n: int | None = None) -> None:
    """The job (and attempt) the current task works on, for every record it logs from now on."""
    job_id.set(str(jid))
    attempt.set(n)


class JobFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = job_id.get()
            if getattr(record, "attempt", None) is None:
                record.attempt = attempt.get()
        record.job = f" [job {record.job_id}]" if record.job_id else ""
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str = "") -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
            "pid": record.process,
        }
        if self.component:
            out["component"] = self.component
        if getattr(record, "job_id", None):
            out["job_id"] = str(record.job_id)
            if getattr(record, "attempt", None) is not None:
                out["attempt"] = record.attempt
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(fmt: str = "text", *, component: str = "", level: int = logging.INFO, stream: Any = None) -> logging.Handler:
    """Our loggers at INFO to stderr (Ray keeps each replica's in its worker log), text or JSON.
    Idempotent per process: a second call replaces the first's handler. Records still propagate
    (a Ray worker's root logger has no handler; a test's log capture sees them)."""
    logger = logging.getLogger(ROOT)
    for h in [h for h in logger.handlers if getattr(h, "_gpu_orch", False)]:
        logger.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._gpu_orch = True  # type: ignore[attr-defined]
    handler.addFilter(JobFilter())
    handler.setFormatter(JsonFormatter(component) if fmt == "json" else logging.Formatter(TEXT))
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler


def configure_from_env(component: str) -> None:
    """In a model replica: the format the router's config chose (serve/app.py passes it along)."""
    configure(os.environ.get("GPU_ORCH_LOG_FORMAT", "text"), component=component)
