"""Face geometry shared by the backends and the benchmarks: MediaPipe FaceMesh landmarks.

FaceMesh (mediapipe 0.10.21, whose wheel ships the models) gives 478 landmarks with the refined
lips, eyes and irises. One ``FaceLandmarker`` per thread or stream: MediaPipe graphs are not
thread-safe, and in tracking mode each keeps the previous frame's face.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ logging: warnings and up
logging.getLogger("absl").setLevel(logging.ERROR)

N_LANDMARKS = 478
INNER_LIP_PAIRS = ((13, 14), (82, 87), (312, 317))  # upper / lower inner-lip points
EYE_OUTER = (33, 263)  # outer eye corners: the face's scale
MOUTH_CORNERS = (61, 291)


@dataclass(frozen=True)
class Face:
    """One face: landmarks in pixels (x, y, z with z in the same scale as x), and its box."""

    landmarks: np.ndarray  # (478, 3) float32

    @property
    def box(self) -> tuple[float, float, float, float]:
        """x0, y0, x1, y1 around the landmarks."""
        xy = self.landmarks[:, :2]
        x0, y0 = xy.min(axis=0)
        x1, y1 = xy.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return (x1 - x0) * (y1 - y0)


class FaceLandmarker:
    def __init__(self, tracking: bool = False, max_faces: int = 1, min_confidence: float = 0.5) -> None:
        """``tracking``: follow a face from frame to frame (video); else every image on its own."""
        import mediapipe as mp  # slow to import; only the backends that need faces pay for it

        self.tracking = tracking
        self.max_faces = max_faces
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=not tracking,
            max_num_faces=1 if not tracking else max_faces,
            refine_landmarks=True,
            min_detection_confidence=min_confidence,
            min_tracking_confidence=min_confidence,
        )
        # FaceMesh finds faces with the short-range detector, which misses small faces in large
        # pictures; for still images the full-range detector finds them and FaceMesh runs on each
        self._detector = None if tracking else mp.solutions.face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=min_confidence
        )

    def faces(self, rgb: np.ndarray) -> list[Face]:
        """The faces in an RGB uint8 image, largest first (empty when there is none)."""
        rgb = np.ascontiguousarray(rgb)
        if self._detector is None:
            return self._mesh_faces(rgb, 0, 0)
        height, width = rgb.shape[:2]
        detections = self._detector.process(rgb).detections or []
        boxes = []
        for detection in detections:
            box = detection.location_data.relative_bounding_box
            boxes.append((box.xmin * width, box.ymin * height, box.width * width, box.height * height))
        boxes.sort(key=lambda b: b[2] * b[3], reverse=True)
        found: list[Face] = []
        for x, y, w, h in boxes[: self.max_faces]:
            side = 2.2 * max(w, h)  # the whole head, with room for FaceMesh's own detector
            x0, y0 = int(max(0, x + w / 2 - side / 2)), int(max(0, y + h / 2 - side / 2))
            x1, y1 = int(min(width, x0 + side)), int(min(height, y0 + side))
            found.extend(self._mesh_faces(np.ascontiguousarray(rgb[y0:y1, x0:x1]), x0, y0)[:1])
        if not found:  # a face filling the picture can escape the full-range detector
            found = self._mesh_faces(rgb, 0, 0)
        return sorted(found, key=lambda f: f.area, reverse=True)

    def _mesh_faces(self, rgb: np.ndarray, left: int, top: int) -> list[Face]:
        height, width = rgb.shape[:2]
        result = self._mesh.process(rgb)
        found = []
        for face in result.multi_face_landmarks or []:
            points = np.array([(p.x * width + left, p.y * height + top, p.z * width) for p in face.landmark], np.float32)
            found.append(Face(points))
        return sorted(found, key=lambda f: f.area, reverse=True)

    def close(self) -> None:
        self._mesh.close()
        if self._detector is not None:
            self._detector.close()

    def __enter__(self) -> "FaceLandmarker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


NO_FACE = "no face was found in the image: use a photo of one person facing the camera, with the whole face visible"


def portrait_face(image: np.ndarray, name: str) -> tuple[Face, str]:
    """The face to animate in a portrait (the largest) and the notice for the user when there
    are several; :class:`AvatarError` when there is none."""
    from engines.base import AvatarError

    with FaceLandmarker(max_faces=4) as landmarker:
        faces = landmarker.faces(image)
    if not faces:
        raise AvatarError(NO_FACE)
    return faces[0], f"{len(faces)} faces found in {name}: animating the largest" if len(faces) > 1 else ""


def face_scale(landmarks: np.ndarray) -> float:
    """Distance between the outer eye corners, in pixels."""
    a, b = EYE_OUTER
    return float(np.linalg.norm(landmarks[a, :2] - landmarks[b, :2]))


def mouth_opening(landmarks: np.ndarray) -> float:
    """Inner-lip opening as DESIGN.md defines it: the mean gap of landmark pairs 13-14, 82-87 and
    312-317, divided by the distance between landmarks 33 and 263."""
    gaps = [np.linalg.norm(landmarks[u, :2] - landmarks[d, :2]) for u, d in INNER_LIP_PAIRS]
    return float(np.mean(gaps) / max(face_scale(landmarks), 1e-6))
