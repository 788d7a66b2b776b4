"""The face crop MuseTalk works on, found with MediaPipe FaceMesh, and the paste-back mask.

Box rule (MuseTalk 1.5's, from 68-point landmarks, mapped to FaceMesh points): left and right
at the landmarks' extremes, bottom at the chin plus 10 px (v1.5's extra margin), top as far
above the lower nose ridge (iBUG point 29; FaceMesh 195) as the chin is below it. The box is
resized to 256x256. MuseTalk regenerates the lower half of that crop.

FaceMesh blending mask: the face oval below the nose ridge point, feathered with a Gaussian blur,
so only the lower face is replaced and the edges fade into the original frame. It is the mask in
camera mode, and for portraits when there is no BiSeNet face parser (``parsing.py`` has that one).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CROP = 256
NOSE_RIDGE = 195  # FaceMesh point nearest iBUG 68-point landmark 29
CHIN = 152
EXTRA_MARGIN = 10  # MuseTalk 1.5 extends the box 10 px below the chin
FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
             148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]


@dataclass
class FaceCrop:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the frame (x1, y1 exclusive)
    crop: np.ndarray  # RGB uint8 256x256
    mask: np.ndarray  # float32 (y1 - y0, x1 - x0) in [0, 1]: how much of the generated face to use


def face_box(landmarks: np.ndarray, width: int, height: int) -> tuple[int, int, int, int] | None:
    xy = landmarks[:, :2]
    chin = float(xy[:, 1].max())
    ridge = float(xy[NOSE_RIDGE, 1])
    x0, x1 = float(xy[:, 0].min()), float(xy[:, 0].max())
    y0 = ridge - (chin - ridge)
    y1 = chin + EXTRA_MARGIN
    x0, y0 = max(0, int(round(x0))), max(0, int(round(y0)))
    x1, y1 = min(width, int(round(x1))), min(height, int(round(y1)))
    if x1 - x0 < 16 or y1 - y0 < 16:
        return None
    return x0, y0, x1, y1


def face_crop(frame: np.ndarray, landmarks: np.ndarray) -> FaceCrop | None:
    height, width = frame.shape[:2]
    box = face_box(landmarks, width, height)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    crop = cv2.resize(np.ascontiguousarray(frame[y0:y1, x0:x1]), (CROP, CROP), interpolation=cv2.INTER_AREA)
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    oval = (landmarks[FACE_OVAL, :2] - (x0, y0)).astype(np.int32)
    cv2.fillPoly(mask, [oval], 255)
    mask[: max(0, int(landmarks[NOSE_RIDGE, 1]) - y0)] = 0  # the lower face only
    feather = max(3, int(0.08 * (x1 - x0)) | 1)
    mask = cv2.GaussianBlur(mask, (feather, feather), 0).astype(np.float32) / 255.0
    return FaceCrop(box, crop, mask)


def paste(frame: np.ndarray, face: FaceCrop, generated: np.ndarray) -> np.ndarray:
    """``generated`` (256x256 RGB uint8) blended into a copy of ``frame`` through the mask."""
    x0, y0, x1, y1 = face.box
    resized = cv2.resize(generated, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    out = frame.copy()
    region = out[y0:y1, x0:x1].astype(np.float32)
    alpha = face.mask[..., None]
    out[y0:y1, x0:x1] = np.clip(region * (1 - alpha) + resized * alpha + 0.5, 0, 255).astype(np.uint8)
    return out
