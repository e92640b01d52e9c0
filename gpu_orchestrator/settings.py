"""All configuration read from the environment, in one pydantic-settings class."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_home() -> Path:
    return Path.home() / ".gpu-orch"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    # Unset -> `gpu-orch up` starts an embedded Postgres / Redis under `home`.
    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    redis_url: str | None = Field(default=None, alias="REDIS_URL")
    home: Path = Field(default_factory=default_home, alias="GPU_ORCH_HOME")
    artifacts_url: str | None = Field(default=None, alias="GPU_ORCH_ARTIFACTS")
    # The local Ray head `gpu-orch up` starts (not 6379: Redis's port, and Ray's GCS default).
    ray_port: int = Field(default=6380, ge=1, le=65535, alias="GPU_ORCH_RAY_PORT")
    ray_dashboard_port: int = Field(default=8265, ge=1, le=65535, alias="GPU_ORCH_RAY_DASHBOARD_PORT")
    # The HTTP ingress of the Ray head `up` starts: Serve's Python proxy (`serve`) or its HAProxy
    # ingress (`haproxy`); see ops/ingress.py. A cluster of RAY_ADDRESS keeps its own.
    ingress: str = Field(default="serve", alias="GPU_ORCH_INGRESS")
    # Memory bound of the embedded Redis (redis-server syntax: 256mb, 1gb); see ops/embedded.py.
    redis_maxmemory: str = Field(default="256mb", alias="GPU_ORCH_REDIS_MAXMEMORY")

