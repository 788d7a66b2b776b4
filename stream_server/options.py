"""Validating the ``options`` of ``POST /offer``: every mistake gets a message and the valid values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engines.base import DEFAULT_MOUTH_GAIN, MOUTH_GAIN_RANGE, Expression
from engines.registry import BackendRegistry, backend_names
from stream_server.avatars import CAMERA, AvatarLibrary
from stream_server.config import Settings

OPTION_NAMES = ("backend", "avatar", "fps", "width", "height", "mouth_gain")
MIN_SIDE, MAX_SIDE = 64, 1920
CAMERA_SIZE = (640, 480)  # used when the camera sends nothing to take the size from


class OptionError(ValueError):
    def __init__(self, message: str, valid: list[Any] | None = None) -> None:
        super().__init__(message)
        self.valid = valid


@dataclass(frozen=True)
class SessionOptions:
    backend: str
    avatar: str
    fps: int
    width: int | None  # None: the camera's own size, known at its first frame
    height: int | None
    mouth_gain: float = DEFAULT_MOUTH_GAIN  # Expression.mouth_gain

    @property
    def expression(self) -> Expression:
        """What the stream's frame jobs carry (``FrameJob.expression``)."""
        return Expression(mouth_gain=self.mouth_gain)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def parse_options(raw: Any, settings: Settings, avatars: AvatarLibrary, backends: BackendRegistry) -> SessionOptions:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise OptionError("options must be a JSON object", list(OPTION_NAMES))
    unknown = sorted(set(raw) - set(OPTION_NAMES))
    if unknown:
        raise OptionError(f"unknown option(s) {', '.join(unknown)}", list(OPTION_NAMES))

    backend = raw.get("backend", settings.backend)
    if backend not in backend_names():
        raise OptionError(f"unknown backend {backend!r}", backend_names())
    reason = backends.unavailable_reason(backend)
    if reason:
        available = [name for name in backend_names() if not backends.unavailable_reason(name)]
        raise OptionError(f"backend {backend!r} is not available: {reason}", available)

    avatar = raw.get("avatar", settings.avatar)
    if not isinstance(avatar, str) or avatar not in avatars.names():
        raise OptionError(f"unknown avatar {avatar!r}", avatars.names())

    fps = _integer(raw, "fps", settings.fps, 1, 60)
    mouth_gain = mouth_gain_option(raw.get("mouth_gain", DEFAULT_MOUTH_GAIN))
    if ("width" in raw) != ("height" in raw):
        raise OptionError("give both width and height, or neither", ["width", "height"])
    if "width" not in raw:
        if avatar == CAMERA:
            return SessionOptions(backend, avatar, fps, None, None, mouth_gain)
        image = avatars.image(avatar)
        assert image is not None
        return SessionOptions(backend, avatar, fps, image.shape[1], image.shape[0], mouth_gain)
    width = _integer(raw, "width", 0, MIN_SIDE, MAX_SIDE)
    height = _integer(raw, "height", 0, MIN_SIDE, MAX_SIDE)
    # the encoders need even sides
    return SessionOptions(backend, avatar, fps, width // 2 * 2, height // 2 * 2, mouth_gain)


def mouth_gain_option(value: Any) -> float:
    """A valid mouth gain (``Expression.mouth_gain``), or OptionError saying the range; ``render``
    checks its ``--mouth-gain`` here too."""
    low, high = MOUTH_GAIN_RANGE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise OptionError(f"mouth_gain must be a number from {low} to {high}, got {value!r}", [low, high])
    if not low <= value <= high:
        raise OptionError(f"mouth_gain must be from {low} to {high} (1: the opening as predicted; "
                          f"default {DEFAULT_MOUTH_GAIN}), got {value}", [low, high])
    return float(value)


def camera_size(width: int, height: int, longest: int = 1280) -> tuple[int, int]:
    """Output size for a camera of width x height: its own, scaled down to ``longest``, even."""
    scale = min(1.0, longest / max(width, height))
    return max(MIN_SIDE, int(width * scale) // 2 * 2), max(MIN_SIDE, int(height * scale) // 2 * 2)


def _integer(raw: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise OptionError(f"{name} must be a whole number from {low} to {high}, got {value!r}", [low, high])
    if not low <= value <= high:
        raise OptionError(f"{name} must be from {low} to {high}, got {value}", [low, high])
    return int(value)
