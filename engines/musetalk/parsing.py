"""MuseTalk's blending mask from BiSeNet face parsing, computed on the exported model's labels.

MuseTalk's rule (``get_image_prepare_material`` in its ``blending.py``, "raw" parsing mode): the
face box is expanded 1.5x into a square around its centre; that square (black outside the
picture) is parsed at 512x512; skin, mouth and both lips become the mask; only the part inside
the face box is kept, and only the rows below the middle of the square; then a Gaussian blur
with a kernel a tenth of the square's side feathers it. MuseTalk 1.5's scripts default to a
"jaw" mode instead (the skin class dilated downwards with a hand-made cone kernel and eroded in
fixed-width cheek bands, tuned on their 512-pixel parse); that is not reproduced here: it could
not be checked without the real weights on real faces, and "raw" is the parse as trained.

numpy and OpenCV only: the backend runs the ONNX model and calls these, with no PyTorch.
"""

from __future__ import annotations

import cv2
import numpy as np

SIZE = 512  # the parse runs at 512x512, as MuseTalk's
CLASSES = 19  # face-parsing.PyTorch's CelebAMask-HQ labels
MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # ImageNet normalisation, as in training
STD = np.array([0.229, 0.224, 0.225], np.float32)
MASK_CLASSES = (1, 11, 12, 13)  # skin, mouth, upper lip, lower lip ("raw" mode)
EXPAND = 1.5  # the parsed square is the face box expanded 1.5x
UPPER_BOUNDARY = 0.5  # rows above this fraction of the square are never replaced

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive)


def parse_box(box: Box, expand: float = EXPAND) -> Box:
    """The square around the face box that is parsed (MuseTalk's ``get_crop_box``; may leave the picture)."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    half = int(max(x1 - x0, y1 - y0) // 2 * expand)
    return cx - half, cy - half, cx + half, cy + half


def crop_padded(image: np.ndarray, box: Box) -> np.ndarray:
    """``image[box]`` with black where the box leaves the picture (as PIL's ``crop`` does)."""
    x0, y0, x1, y1 = box
    height, width = image.shape[:2]
    out = np.zeros((y1 - y0, x1 - x0, *image.shape[2:]), image.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


def parse_input(frame: np.ndarray, box: Box) -> np.ndarray:
    """The model's input for the face in ``box``: (1, 3, 512, 512) float32, normalised RGB."""
    square = crop_padded(frame, parse_box(box))
    # area averaging when shrinking, like PIL's antialiased bilinear resize MuseTalk uses
    interpolation = cv2.INTER_AREA if square.shape[0] > SIZE else cv2.INTER_LINEAR
    image = cv2.resize(square, (SIZE, SIZE), interpolation=interpolation).astype(np.float32) / 255.0
    return np.ascontiguousarray(((image - MEAN) / STD).transpose(2, 0, 1)[None], np.float32)


def parsing_mask(labels: np.ndarray, box: Box) -> np.ndarray:
    """The feathered blending mask over ``box`` (float32 in [0, 1], box-sized) from the 512x512
    class labels of the square around it."""
    sx0, sy0, sx1, _ = parse_box(box)
    side = sx1 - sx0
    x0, y0, x1, y1 = box
    inside = (slice(y0 - sy0, y1 - sy0), slice(x0 - sx0, x1 - sx0))
    face = np.where(np.isin(labels, MASK_CLASSES), 255, 0).astype(np.uint8)
    face = cv2.resize(face, (side, side), interpolation=cv2.INTER_LINEAR)
    kept = np.zeros_like(face)
    kept[inside] = face[inside]  # the face box only
    kept[: int(side * UPPER_BOUNDARY)] = 0  # the lower half of the square only
    kernel = int(0.1 * side // 2 * 2) + 1
    # blurred over the whole square, so the mask also fades out towards the box's edges
    return cv2.GaussianBlur(kept, (kernel, kernel), 0)[inside].astype(np.float32) / 255.0
