"""Small image helpers used on the frame path (run in worker threads, never on the event loop)."""

from __future__ import annotations

from typing import Callable

import av
import cv2
import numpy as np

from engines.images import fit_cover
from stream_server.scheduler import Emission, FrameKind


def video_frame_to_rgb(frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
    return np.ascontiguousarray(fit_cover(frame.to_ndarray(format="rgb24"), width, height))


def blend(first: np.ndarray, second: np.ndarray, weight: float) -> np.ndarray:
    """(1 - weight) * first + weight * second."""
    return cv2.addWeighted(first, 1.0 - weight, second, weight, 0.0)


def emission_image(emission: Emission[np.ndarray], base: Callable[[], np.ndarray]) -> np.ndarray:
    """The picture to send for a slot: its generated frame, a blend of its neighbours, or
    (before anything was generated) the base frame, which ``base`` makes only when needed."""
    if emission.kind is FrameKind.INTERPOLATED:
        return blend(emission.frames[0], emission.frames[1], emission.weight)
    if emission.frames:
        return emission.frames[0]
    return base()
