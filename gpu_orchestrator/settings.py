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

