"""Reading image files and fitting images to a frame size, for backends, the server and benchmarks.

Images are RGB uint8 arrays (height, width, 3) everywhere; a file is decoded with OpenCV and
scaled down to at most MAX_SIDE with even sides (video encoders want even sides).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

MAX_SIDE = 1920  # larger images are scaled down when loaded


class AvatarFileError(ValueError):
    """An avatar image that cannot be read; the message says which file and why."""


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 image from a file, scaled down to at most MAX_SIDE, with even sides."""
    if not path.is_file():
        raise AvatarFileError(f"avatar image {path} does not exist")
    data = np.fromfile(str(path), np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise AvatarFileError(f"{path} is not an image OpenCV can read (use a JPEG or PNG)")
    height, width = bgr.shape[:2]
    scale = min(1.0, MAX_SIDE / max(height, width))
    size = (max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2))
    if size != (width, height):
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def fit_cover(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale ``image`` to cover width x height and crop the centre (no bars, no distortion)."""
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    scale = max(width / w, height / h)
    resized = cv2.resize(
        image,
        (max(width, round(w * scale)), max(height, round(h * scale))),
        interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
    )
    top = (resized.shape[0] - height) // 2
    left = (resized.shape[1] - width) // 2
    return resized[top : top + height, left : left + width]


FRAMINGS = ("face", "whole")  # a portrait cropped to head and shoulders, or the whole picture
DEFAULT_FRAMING = "face"
FACE_SHARE = 0.4  # the face's height over the framed picture's: head, neck and shoulders


def face_window(size: tuple[int, int], face_box: tuple[float, float, float, float], width: int, height: int,
                face_share: float = FACE_SHARE) -> tuple[int, int, int, int]:
    """The part of a ``size`` (w, h) picture that frames the face in ``face_box`` (x0, y0, x1, y1)
    at the output's aspect: the face ``face_share`` of its height, a little above the centre,
    inside the picture. The whole picture's centre crop when the face is large already."""
    w, h = size
    x0, y0, x1, y1 = face_box
    crop_h = (y1 - y0) / face_share
    crop_w = crop_h * width / height
    cover = min(w / width, h / height)  # the largest window of the output's aspect inside the picture
    if crop_w >= cover * width or crop_h >= cover * height:
        crop_w, crop_h = cover * width, cover * height
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 + 0.1 * crop_h  # the face a little above the centre
    left = min(max(0.0, cx - crop_w / 2), w - crop_w)
    top = min(max(0.0, cy - crop_h / 2), h - crop_h)
    return round(left), round(top), round(left + crop_w), round(top + crop_h)


def frame_face(image: np.ndarray, face_box: tuple[float, float, float, float], width: int, height: int) -> np.ndarray:
    """``image`` cropped around its face (``face_window``) and scaled to width x height."""
    left, top, right, bottom = face_window((image.shape[1], image.shape[0]), face_box, width, height)
    return fit_cover(np.ascontiguousarray(image[top:bottom, left:right]), width, height)
