"""The backend contract every lip-sync engine implements.

A backend is loaded once per process and shared by every session. The scheduler hands it
batches of :class:`FrameJob` (one per output slot: the audio window around the slot's time,
the base frame to animate, the prepared avatar) from a worker thread, never from the event
loop. Backends declare how much future audio they need (``lookahead_s``) and how many jobs they
like to receive at once (``batch_size``); the worker groups jobs due in the same tick across
sessions up to that size.

Besides generating frames, a backend speaks for itself to the rest of the server, so that no
command names a backend: it lists the files it needs for ``doctor`` (:meth:`Backend.files`),
ranks how good it looks for ``--backend auto`` (``quality_rank``), and may name an ``export``
command (:class:`BackendExport`) that turns published weights into what it runs.
"""

from __future__ import annotations

import abc
import collections
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np


class BackendError(RuntimeError):
    """A backend could not do what was asked; the message is shown to the user."""


class AvatarError(BackendError):
    """The avatar image cannot be used by this backend (no face, unreadable, too small...)."""


@dataclass(frozen=True)
class AudioWindow:
    """Audio around one video frame, cut from the session's ring buffer.

    ``pcm`` is 16 kHz mono float32 covering [center - before, center + after);
    ``mel`` is the log-mel frames (80 bins, 10 ms hop) over the same span, shape (frames, 80).
    Samples that never arrived (lost packets, not yet received) are zeros, never shifted.
    """

    center_s: float
    before_s: float
    after_s: float
    pcm: np.ndarray
    mel: np.ndarray
    sample_rate: int = 16000


@dataclass
class Avatar:
    """An avatar prepared once by a backend and reused for every frame of every session.

    ``image`` is the RGB uint8 portrait (None for the live camera). ``data`` holds whatever the
    backend cached while preparing it (landmarks, latents, masks...).
    """

    name: str
    image: np.ndarray | None
    data: dict[str, Any] = field(default_factory=dict)
    notice: str = ""  # something the user should know about it ("3 faces: using the largest")

    @property
    def is_camera(self) -> bool:
        return self.image is None


MOUTH_GAIN_RANGE = (0.5, 3.0)  # the mouth gains a user may ask for
DEFAULT_MOUTH_GAIN = 1.75  # tuned on the bundled portrait: see README, "Expressiveness"
# the emotions a user may ask for: the 8 classes Ditto's LMDM is conditioned on, in its label order
EMOTIONS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise", "contempt")
DEFAULT_EMOTION = "neutral"
MOTIONS = ("still", "natural", "lively")  # Expression.motion


@dataclass(frozen=True)
class Expression:
    """How expressive a stream's avatar is: set per stream by its user (the ``mouth_gain``
    option of ``render``, ``/offer`` and channels) and carried on every :class:`FrameJob`.

    ``mouth_gain`` scales the mouth opening the audio drives (1: as predicted; real speakers
    open their mouths less than an animated avatar should). A backend uses the fields it
    understands and ignores the rest (``passthrough`` and ``musetalk`` ignore them all, ``mesh``
    the emotion); later fields are added here, each with a default that changes nothing.

    ``motion`` (``still``, ``natural``, ``lively``) is how much the head, brows and eyes move with
    the voice (``mesh``); unset, a portrait moves naturally and the camera only as the user does.

    ``emotion`` (one of ``EMOTIONS``) and ``emotion_intensity`` (0: neutral .. 1: that emotion
    fully) condition a backend that models emotion (``vasa``). A stream's expression may change
    while it runs (the page sends a new one); jobs made after the change carry it.
    """

    mouth_gain: float = DEFAULT_MOUTH_GAIN
    emotion: str = DEFAULT_EMOTION
    emotion_intensity: float = 1.0
    motion: str | None = None  # head, brows and blinks: one of MOTIONS; None: the avatar's default


@dataclass
class FrameJob:
    """One output frame to generate."""

    stream_id: str  # the session it belongs to, for backends that keep per-stream state
    slot: int  # output slot index k (time = k / fps)
    time_s: float  # media time of the slot
    audio: AudioWindow
    base_frame: np.ndarray  # RGB uint8 HxWx3 at the output size
    avatar: Avatar
    expression: Expression = Expression()  # the stream's, the same for each of its jobs


@dataclass(frozen=True)
class BackendInfo:
    """What ``GET /backends`` shows about one backend."""

    name: str
    description: str
    available: bool
    reason: str  # why it is unavailable; empty when available
    lookahead_ms: float
    batch_size: int
    typical_fps: float | None  # measured on this machine at load time, None before loading

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "available": self.available,
            "reason": self.reason,
            "lookahead_ms": self.lookahead_ms,
            "batch_size": self.batch_size,
            "typical_fps": self.typical_fps,
        }


@dataclass(frozen=True)
class BackendFile:
    """One file a backend needs, or the files it reads together (weights and their config), as
    ``doctor`` reports it: where it was found (empty: not found), each alternative looked at
    (first preferred), where it is published, and what it means here (``state``: "exported: ...",
    "using the FaceMesh mask"...). An optional file may be missing without the backend being
    unavailable."""

    name: str
    found: tuple[Path, ...]
    looked_at: tuple[str, ...]
    published: str
    optional: bool = False
    state: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "found": [str(path) for path in self.found] or None,
            "optional": self.optional,
            "looked_at": list(self.looked_at),
            "published": self.published,
            "state": self.state,
        }


@dataclass(frozen=True)
class BackendFiles:
    """Every file a backend looks for, under one directory (``directory_env`` moves it), and
    notes for the user about them ("exported ONNX: none (run: ...)")."""

    directory: Path
    directory_env: str
    files: tuple[BackendFile, ...]
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "directory_env": self.directory_env,
            "files": [entry.to_json() for entry in self.files],
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class BackendExport:
    """``python -m stream_server export <backend>``: turns the published files into what the
    backend runs.

    ``entry`` is ``"module:function"``, imported only when exporting (so the export's heavy
    dependencies, PyTorch and the like, are never imported to serve); the function is called as
    ``function(models_dir, out_dir)`` (either None for its default) and raises one of ``errors``
    with a message for the user. ``needs`` are the modules it imports (from the ``export``
    extra), checked first so that a missing one gets the install hint.
    """

    entry: str
    help: str  # one line: what the export writes
    models_dir_help: str  # the --models-dir option: where the published files are
    out_help: str  # the --out option: where the exported files go by default
    errors: tuple[type[Exception], ...] = ()
    needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class BackendEnrol:
    """``python -m stream_server enrol --video V --name N`` (and ``POST /avatars`` with a video):
    a backend that builds a person's own avatar from a video of them names its enrol function.

    ``entry`` is ``"module:function"``, imported only when enrolling, called as ``function(video,
    name, root, *, tiny, progress, cancel)`` -> the enrolled avatar's folder under ``root``
    (``LIPSYNC_AVATARS_DIR``, default ./avatars), which holds a ``thumb.jpg`` the avatar list
    shows. It raises one of ``errors`` with a message for the user (no face, too short...).
    ``progress`` gets dicts with ``stage`` and ``fraction`` (0..1) and, while training,
    ``iteration``, ``total``, ``loss``, ``heldout_psnr`` and ``seconds_left``; setting ``cancel``
    (a ``threading.Event``) stops it. ``tiny``: a test-scale avatar, the only one a CPU can make.
    """

    entry: str
    help: str
    errors: tuple[type[Exception], ...] = ()
    needs: tuple[str, ...] = ()


AVATARS_DIR_ENV = "LIPSYNC_AVATARS_DIR"  # where enrolled avatars are kept


def avatars_dir() -> Path:
    return Path(os.environ.get(AVATARS_DIR_ENV) or "avatars")


class Backend(abc.ABC):
    """Base class of every lip-sync backend.

    Subclasses set the class attributes, may override :meth:`unavailable_reason` to say why
    they cannot run here (missing weights, no GPU...), and implement :meth:`prepare_avatar` and
    :meth:`generate`. ``generate`` must return one RGB uint8 frame per job, each the shape of
    the job's ``base_frame``. A backend with files to place overrides :meth:`files`; one that
    lip-syncs sets ``quality_rank`` so that ``auto`` may choose it; one whose weights need
    converting sets ``export``.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    lookahead_s: ClassVar[float] = 0.0  # future audio each frame needs
    context_s: ClassVar[float] = 0.2  # past audio each frame needs
    batch_size: ClassVar[int] = 1  # jobs per generate() call the backend prefers
    # how good it looks, for --backend auto: higher first; None is never chosen (no lip-sync)
    quality_rank: ClassVar[int | None] = None
    export: ClassVar[BackendExport | None] = None  # its export command, if it has one
    enrol: ClassVar[BackendEnrol | None] = None  # how it enrols a person from a video, if it can
    # a CPU backend whose work spreads over worker processes (its avatars pickle); a GPU
    # backend stays in the server's process, where one model serves and batches every session
    in_processes: ClassVar[bool] = False

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when the backend can run here, else a sentence saying why not and what to do."""
        return None

    @classmethod
    def files(cls) -> BackendFiles | None:
        """The files this backend looks for, found or not, for ``doctor``; None when it needs none."""
        return None

    @classmethod
    def calibration_key(cls) -> str:
        """What, besides its code and the machine, this backend's speed depends on (its model
        files, the provider forced): a cached speed measurement is reused only while it matches."""
        return ""

    def load(self) -> None:
        """Load models and warm up. Called once per process, in a worker thread."""

    @abc.abstractmethod
    def prepare_avatar(self, name: str, image: np.ndarray | None) -> Avatar:
        """Prepare an avatar once; ``image`` is RGB uint8, or None for the live camera.

        Raise :class:`AvatarError` with a clear message when the image cannot be used.
        """

    @abc.abstractmethod
    def generate(self, jobs: Sequence[FrameJob]) -> list[np.ndarray]:
        """Generate one frame per job (RGB uint8, same shape as ``job.base_frame``)."""

    def close_stream(self, stream_id: str) -> None:
        """Forget per-stream state when a session ends."""

    def stream_stats(self, stream_id: str) -> dict[str, int]:
        """Backend-specific counts for a stream, shown with the session's stats."""
        return {}


class ClosedStreams:
    """The streams a backend was told to close (the most recent ``remember`` of them).

    A session can end while a job of its stream is still queued or running; that job reaches
    ``generate`` after ``close_stream``. A backend that made the stream's state again for it
    would keep it for good (a face tracker and its threads: the churn benchmark saw two threads
    and ~7 MB more per ended camera session), so it asks here first and, for a closed stream,
    returns the base frame as it is (nobody receives it)."""

    def __init__(self, remember: int = 4096) -> None:
        self._ids: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._remember = remember

    def add(self, stream_id: str) -> None:
        self._ids[stream_id] = None
        while len(self._ids) > self._remember:
            self._ids.popitem(last=False)

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._ids


def describe(cls: type[Backend], reason: str | None, typical_fps: float | None = None) -> BackendInfo:
    return BackendInfo(
        name=cls.name,
        description=cls.description,
        available=reason is None,
        reason=reason or "",
        lookahead_ms=round(cls.lookahead_s * 1000.0, 1),
        batch_size=cls.batch_size,
        typical_fps=typical_fps,
    )


def check_frames(jobs: Sequence[FrameJob], frames: Sequence[np.ndarray]) -> None:
    """Raise BackendError unless ``frames`` matches ``jobs`` one to one in shape and dtype."""
    if len(frames) != len(jobs):
        raise BackendError(f"backend returned {len(frames)} frames for {len(jobs)} jobs")
    for job, frame in zip(jobs, frames):
        if not isinstance(frame, np.ndarray) or frame.shape != job.base_frame.shape or frame.dtype != np.uint8:
            got = getattr(frame, "shape", type(frame).__name__)
            raise BackendError(
                f"backend returned a frame of shape {got}, expected {job.base_frame.shape} uint8"
            )
