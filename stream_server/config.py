"""Server settings: defaults, overridden by LIPSYNC_* environment variables, then by CLI flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from engines.registry import DEFAULT_BACKEND

FPS_CHOICES = (15, 20, 25, 30)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LIPSYNC_")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    backend: str = DEFAULT_BACKEND  # default backend for new sessions
    avatar: str = "camera"  # default avatar for new sessions
    fps: int = Field(25, ge=1, le=60)
    avatar_files: list[Path] = []
    min_budget_ms: float = Field(40.0, ge=0)  # the least time allowed for a frame after its audio
    max_body_bytes: int = Field(256 * 1024, ge=1024)  # an offer is a few kB of SDP
    ice_servers: list[dict] = []  # RTCIceServer dicts, passed to the server and the page
    trace_file: Path | None = None  # one JSON line per output frame with its stage timings
