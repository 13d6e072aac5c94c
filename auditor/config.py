"""Settings read from `AUDITOR_*` environment variables.

The defaults run embedded: a SQLite file and a data directory in the working folder, so a newcomer
needs no server to try the tool.
"""

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUDITOR_", extra="ignore")

    database_url: str = Field(
        default="sqlite:///auditor.db",
        description="SQLAlchemy URL; PostgreSQL in production (postgresql+psycopg://...).",
    )
    data_dir: Path = Field(default=Path("auditor-data"), description="Feature cache, reports.")
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N.")
    workers: int = Field(
        default=0, ge=0, description="Decode/load worker processes; 0 = all cores."
    )
    auth: bool = Field(default=False, description="Require API keys on the REST API.")
    offline: bool = Field(default=False, description="Never download model weights.")
    ray_address: str | None = Field(default=None, description="Ray cluster for scale-out.")
    max_image_pixels: int = Field(
        default=100_000_000,
        description="Images with more pixels are refused as decompression bombs, never decoded.",
    )
    max_file_bytes: int = Field(default=256 * 1024 * 1024, description="Larger files are refused.")
    lease_seconds: float = Field(
        default=120.0, gt=0, description="A running audit whose heartbeat is older is taken over."
    )
    max_attempts: int = Field(default=3, ge=1, description="Tries before an audit is failed.")
    retry_base_seconds: float = Field(default=30.0, ge=0, description="Backoff doubles per try.")
    poll_seconds: float = Field(default=2.0, gt=0, description="Worker's wait when idle.")

    db_pool_size: int = Field(
        default=10,
        ge=1,
        description="PostgreSQL connections each process keeps open (SQLAlchemy pool_size).",
    )
    db_max_overflow: int = Field(
        default=10,
        ge=0,
        description="Extra PostgreSQL connections a process may open under load, closed when idle.",
    )
    db_pool_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a request waits for a free pooled connection before it fails.",
    )

    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1


@lru_cache
def get_settings() -> Settings:
    return Settings()
