"""Checking an uploaded avatar image: size, pixel count (read from the header, before decoding),
that it is an image at all, and that it shows a face."""

from __future__ import annotations

import io
import re
import warnings

import cv2
import numpy as np

from engines.images import MAX_SIDE

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
FORMATS = ("JPEG", "PNG", "WEBP", "BMP")


class UploadError(ValueError):
    """An upload that cannot be used; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, valid: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.valid = valid


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise UploadError(400, f"avatar name {name!r} is not allowed: 1 to 32 letters, digits, '-' or '_'", ["[A-Za-z0-9_-]{1,32}"])
    return name


def decode_upload(data: bytes, max_pixels: int) -> np.ndarray:
    """RGB uint8 image from uploaded bytes; the pixel count is checked before anything is decoded."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise UploadError(400, "the upload is empty: send the image file as the request body")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as header:  # reads the header only
                width, height = header.size
                kind = header.format
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise UploadError(413, f"the image has far more pixels than allowed: the limit is {max_pixels} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise UploadError(415, "the upload is not an image: send a JPEG, PNG or WebP file", list(FORMATS)) from None
    if kind not in FORMATS:
        raise UploadError(415, f"{kind} images are not accepted: send a JPEG, PNG or WebP file", list(FORMATS))
    if width * height > max_pixels:
        raise UploadError(413, f"the image is {width}x{height} = {width * height} pixels: the limit is {max_pixels} pixels")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise UploadError(415, "the image could not be decoded (truncated or corrupt file)", list(FORMATS))
    scale = min(1.0, MAX_SIDE / max(bgr.shape[:2]))
    size = (max(2, int(bgr.shape[1] * scale) // 2 * 2), max(2, int(bgr.shape[0] * scale) // 2 * 2))
    if size != (bgr.shape[1], bgr.shape[0]):
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    if min(size) < 64:
        raise UploadError(422, f"the image is too small ({size[0]}x{size[1]}): at least 64 pixels a side")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def require_face(rgb: np.ndarray) -> None:
    """Raise UploadError (422) unless FaceMesh finds a face (blocking: call it off the loop)."""
    from engines.face import FaceLandmarker

    with FaceLandmarker(max_faces=1) as landmarker:
        if not landmarker.faces(rgb):
            raise UploadError(
                422,
                "no face was found in the image: use a photo of one person facing the camera, with the whole face visible",
            )
