"""Validating the ``options`` of ``POST /offer``: every mistake gets a message and the valid values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engines.base import DEFAULT_EMOTION, DEFAULT_MOUTH_GAIN, EMOTIONS, MOTIONS, MOUTH_GAIN_RANGE, Expression
from engines.images import DEFAULT_FRAMING, FRAMINGS
from engines.registry import BackendRegistry, backend_names
from stream_server.avatars import CAMERA, AvatarLibrary
from stream_server.config import Settings

OPTION_NAMES = ("backend", "avatar", "fps", "width", "height", "mouth_gain", "emotion", "emotion_intensity", "motion", "framing")
EXPRESSION_NAMES = ("mouth_gain", "emotion", "emotion_intensity", "motion")  # what a running stream may change
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
    emotion: str = DEFAULT_EMOTION  # Expression.emotion
    emotion_intensity: float = 1.0  # Expression.emotion_intensity
    motion: str | None = None  # Expression.motion (None: the avatar's default)
    framing: str = DEFAULT_FRAMING  # a portrait cropped to head and shoulders ("face") or "whole"

    @property
    def expression(self) -> Expression:
        """What the stream's frame jobs carry (``FrameJob.expression``)."""
        return Expression(mouth_gain=self.mouth_gain, emotion=self.emotion, emotion_intensity=self.emotion_intensity,
                          motion=self.motion)

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
    expression = expression_options(raw, Expression())
    framing = framing_option(raw.get("framing", DEFAULT_FRAMING))
    if ("width" in raw) != ("height" in raw):
        raise OptionError("give both width and height, or neither", ["width", "height"])
    if "width" not in raw:
        if avatar == CAMERA:
            return SessionOptions(backend, avatar, fps, None, None, *_fields(expression), framing=framing)
        image = avatars.image(avatar)
        assert image is not None
        return SessionOptions(backend, avatar, fps, image.shape[1], image.shape[0], *_fields(expression), framing=framing)
    width = _integer(raw, "width", 0, MIN_SIDE, MAX_SIDE)
    height = _integer(raw, "height", 0, MIN_SIDE, MAX_SIDE)
    # the encoders need even sides
    return SessionOptions(backend, avatar, fps, width // 2 * 2, height // 2 * 2, *_fields(expression), framing=framing)


def _fields(expression: Expression) -> tuple[float, str, float, str | None]:
    return expression.mouth_gain, expression.emotion, expression.emotion_intensity, expression.motion


def expression_options(raw: dict[str, Any], current: Expression) -> Expression:
    """``current`` with the expression fields ``raw`` names, each checked (OptionError saying the
    valid values); the offer's options and a running stream's change both come through here."""
    return Expression(
        mouth_gain=mouth_gain_option(raw.get("mouth_gain", current.mouth_gain)),
        emotion=emotion_option(raw.get("emotion", current.emotion)),
        emotion_intensity=intensity_option(raw.get("emotion_intensity", current.emotion_intensity)),
        motion=motion_option(raw.get("motion", current.motion)),
    )


def motion_option(value: Any) -> str | None:
    """One of ``MOTIONS`` (None: the avatar's default), or OptionError listing them."""
    if value is None:
        return None
    if not isinstance(value, str) or value.strip().lower() not in MOTIONS:
        raise OptionError(f"motion must be one of {', '.join(MOTIONS)} (how much the head, brows and eyes move with "
                          f"the voice; default natural on a portrait, none added to the camera), got {value!r}",
                          list(MOTIONS))
    return value.strip().lower()


def framing_option(value: Any) -> str:
    """One of ``FRAMINGS``, or OptionError listing them; ``render`` checks its ``--framing`` here too."""
    if value not in FRAMINGS:
        raise OptionError(f"framing must be one of {', '.join(FRAMINGS)} (face: a portrait cropped to head and "
                          f"shoulders; whole: the whole picture; default {DEFAULT_FRAMING}), got {value!r}", list(FRAMINGS))
    return str(value)


def emotion_option(value: Any) -> str:
    """One of ``EMOTIONS`` (case-insensitive), or OptionError listing them."""
    if not isinstance(value, str) or value.strip().lower() not in EMOTIONS:
        raise OptionError(f"emotion must be one of {', '.join(EMOTIONS)} (default {DEFAULT_EMOTION}), got {value!r}",
                          list(EMOTIONS))
    return value.strip().lower()


def intensity_option(value: Any) -> float:
    """An emotion intensity from 0 (neutral) to 1 (the emotion fully), or OptionError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or not 0.0 <= value <= 1.0:
        raise OptionError(f"emotion_intensity must be a number from 0 (neutral) to 1 (the emotion fully), "
                          f"got {value!r}", [0.0, 1.0])
    return float(value)


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
