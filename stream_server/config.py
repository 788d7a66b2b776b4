"""Server settings: defaults, overridden by LIPSYNC_* environment variables, then by CLI flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engines.registry import DEFAULT_BACKEND
from stream_server.ids import check_instance
from stream_server.inbound_audio import DEFAULT_AUDIO_PREFETCH

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
    channels: list[str] = []  # channels created at start-up (WHIP in, WHEP out), with the defaults above
    recordings_dir: Path = Path("recordings")  # where channel recordings are written
    avatars_dir: Path = Path("avatars")  # enrolled heads (LIPSYNC_AVATARS_DIR; engines.base.avatars_dir)
    egress_whip: str = ""  # publish the one start-up channel to this WHIP endpoint (an SFU)
    egress_token: str = ""  # its bearer token, if it needs one
    max_viewers: int = Field(16, ge=1)  # WHEP viewers per channel (each costs one video encode)
    # this server's name in a cluster: its session and resource ids start with "NAME-" so that a
    # load balancer sends each follow-up request to its owner (stream_server/ids.py)
    instance: str = ""

    # -- access ----------------------------------------------------------------------------
    token: str = ""  # when set, every API and WebSocket call must carry it (LIPSYNC_TOKEN)
    tls_cert: Path | None = None  # PEM certificate chain; with tls_key, the server speaks HTTPS
    tls_key: Path | None = None
    cors_origins: list[str] = []  # other origins (scheme://host[:port]) allowed to call the API

    # -- limits ----------------------------------------------------------------------------
    max_sessions: int = Field(4, ge=1)  # beyond it, POST /offer answers 503 with Retry-After
    retry_after_s: int = Field(30, ge=1)
    idle_timeout_s: float = Field(10.0, gt=0)  # no packet from the peer for this long ends a session
    # inbound audio packets held before the oldest is decoded (aiortc's own: 4, 80 ms, the
    # default; 1: 20 ms; reordering and loss are handled alike: stream_server/inbound_audio.py)
    audio_prefetch: int = Field(DEFAULT_AUDIO_PREFETCH, ge=1, le=8)
    max_session_s: float = Field(12 * 3600.0, gt=0)  # a session is ended after this long
    max_upload_bytes: int = Field(8 * 1024 * 1024, ge=1024)  # an uploaded avatar image
    max_video_bytes: int = Field(300 * 1024 * 1024, ge=1024)  # a video uploaded to enrol a person
    max_upload_pixels: int = Field(4096 * 4096, ge=64 * 64)
    max_uploads: int = Field(16, ge=1)  # uploaded avatars kept; the oldest is forgotten beyond it

    # -- fault isolation -------------------------------------------------------------------
    # a generate() call longer than this is a hang (generous: a first call may build a model's
    # graph, and a loaded machine is slow; a false alarm costs its sessions the fallback)
    hang_timeout_s: float = Field(10.0, gt=0)
    failures_before_fallback: int = Field(3, ge=1)  # failed frames in a row that switch a session
    fallback_backends: list[str] = ["mesh", "passthrough"]  # tried in order; never the failing one
    # worker processes for a CPU backend (None: one per core; 0: run it in the server's process)
    workers: int | None = Field(None, ge=0, le=256)

    def worker_processes(self) -> int:
        from stream_server.process_pool import default_workers

        return default_workers() if self.workers is None else self.workers

    @field_validator("instance")
    @classmethod
    def _instance_name(cls, name: str) -> str:
        return check_instance(name)
