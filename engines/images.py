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
