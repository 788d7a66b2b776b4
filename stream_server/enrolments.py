"""Enrolling a person from an uploaded video (``POST /avatars`` with a video): one background job
at a time, its progress for the page, cancellable; the avatar appears in ``GET /avatars`` when
it is done.

The work is the backend's own (``Backend.enrol``, run in a thread); this module only keeps the
job's state. Without a GPU the avatar is made at test scale (``tiny``), the only scale a CPU can
train in minutes, and the state says so.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engines.base import BackendEnrol, avatars_dir
from engines.registry import importable_backends, load_entry

log = logging.getLogger(__name__)

VIDEO_TYPES = ("video/", "application/mp4")
VIDEO_MAGIC = (b"ftyp", b"\x1aE\xdf\xa3", b"RIFF")  # MP4/MOV (at offset 4), WebM/MKV, AVI


def is_video(head: bytes) -> bool:
    """Whether a file's first bytes are a video container's (whatever its Content-Type said)."""
    return head[4:8] == VIDEO_MAGIC[0] or head[:4] in VIDEO_MAGIC[1:]


def enrolling_backend() -> tuple[str, BackendEnrol] | None:
    for name, cls in importable_backends().items():
        if cls.enrol is not None:
            return name, cls.enrol
    return None


@dataclass
class Enrolment:
    name: str
    backend: str
    tiny: bool
    state: str = "running"  # running, done, failed, cancelled
    progress: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    started: float = field(default_factory=time.time)
    cancel: threading.Event = field(default_factory=threading.Event)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "backend": self.backend, "tiny": self.tiny, "state": self.state,
                "progress": dict(self.progress), "error": self.error, "seconds": round(time.time() - self.started, 1)}


class EnrolmentError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Enrolments:
    """The server's enrolment jobs by avatar name; one runs at a time."""

    def __init__(self, on_done: Callable[[Path], None], gpu: Callable[[], bool]) -> None:
        self._jobs: dict[str, Enrolment] = {}
        self._on_done = on_done
        self._gpu = gpu

    def get(self, name: str) -> Enrolment | None:
        return self._jobs.get(name)

    def start(self, name: str, video: bytes) -> Enrolment:
        found = enrolling_backend()
        if found is None:
            raise EnrolmentError(409, "no backend here can enrol a person from a video (the gaussian backend needs PyTorch)")
        if any(job.state == "running" for job in self._jobs.values()):
            running = next(job.name for job in self._jobs.values() if job.state == "running")
            raise EnrolmentError(409, f"an enrolment is running ({running}); one at a time: wait for it or cancel it")
        backend, spec = found
        job = Enrolment(name, backend, tiny=not self._gpu())
        self._jobs[name] = job
        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, self._run, job, spec, video, loop)
        return job

    def _run(self, job: Enrolment, spec: BackendEnrol, video: bytes, loop: asyncio.AbstractEventLoop) -> None:
        with tempfile.TemporaryDirectory(prefix="enrol-") as folder:
            path = Path(folder) / "upload.mp4"
            path.write_bytes(video)
            try:
                run = load_entry(spec.entry)
                result = run(path, job.name, avatars_dir(), tiny=job.tiny, progress=job.progress.update, cancel=job.cancel)
            except spec.errors as exc:
                job.state, job.error = ("cancelled" if job.cancel.is_set() else "failed"), str(exc)
                return
            except Exception as exc:  # a bug must not take the server down: the page is told
                log.exception("enrolment of %s failed", job.name)
                job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
                return
        loop.call_soon_threadsafe(self._on_done, result)  # the avatar list belongs to the event loop
        job.state = "done"
