"""The avatars a session can pick: the live camera, the bundled portrait, and image files."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from engines.images import fit_cover, frame_face, read_image

ASSETS = Path(__file__).resolve().parent / "assets"
CAMERA = "camera"
BUNDLED = {"astronaut": ASSETS / "astronaut.jpg"}
THUMBNAIL_SIDE = 160


def enrolled_picture(folder: Path) -> Path:
    """The picture of an enrolled avatar (NAME.KIND/): its first frame (poster.jpg) if kept, else
    its thumbnail; the session's size comes from it, and other backends animate it."""
    poster = folder / "poster.jpg"
    return poster if poster.is_file() else folder / "thumb.jpg"


def find_enrolled(name: str, root: Path) -> Path | None:
    """The folder of the avatar ``name`` enrolled under ``root``, if there is one."""
    return next((f for f in sorted(root.glob(f"{name}.*")) if (f / "thumb.jpg").is_file()), None) if root.is_dir() else None


@dataclass(frozen=True)
class AvatarSource:
    name: str
    kind: str  # "camera" or "image"
    path: Path | None = None
    enrolled: bool = False  # a person's own head, enrolled from a video (``enrol``)

    def to_json(self) -> dict[str, str | bool | None]:
        url = f"/avatars/{self.name}.jpg" if self.kind == "image" else None
        return {"name": self.name, "kind": self.kind, "url": url, "enrolled": self.enrolled}


FaceBox = tuple[float, float, float, float]  # x0, y0, x1, y1


def face_box(image: np.ndarray) -> FaceBox | None:
    """The box around the largest face in a picture, or None (blocking: MediaPipe)."""
    from engines.face import FaceLandmarker  # slow to import: only when a portrait is framed

    with FaceLandmarker(max_faces=1) as landmarker:
        faces = landmarker.faces(image)
    return faces[0].box if faces else None


def frame_portrait(image: np.ndarray, framing: str, enrolled: bool, width: int, height: int,
                   find_face: Callable[[np.ndarray], FaceBox | None] = face_box) -> np.ndarray:
    """A picture at width x height: with ``framing`` "face" cropped to head and shoulders
    (``engines.images.frame_face``), else the whole picture's centre. A head enrolled from a video
    is always whole (its backend draws that view); a picture without a face too (the backend then
    says so). Blocking: call it off the loop."""
    box = find_face(image) if framing == "face" and not enrolled else None
    return fit_cover(image, width, height) if box is None else frame_face(image, box, width, height)


class AvatarLibrary:
    """Avatar names -> sources; images are read once and kept. Uploaded images live in memory
    only, at most ``max_uploads`` of them (the oldest is forgotten when a new one comes)."""

    def __init__(self, files: list[Path] | None = None, max_uploads: int = 16, enrolled: Path | None = None) -> None:
        self._sources: dict[str, AvatarSource] = {CAMERA: AvatarSource(CAMERA, "camera")}
        for name, path in BUNDLED.items():
            self._sources[name] = AvatarSource(name, "image", path)
        for path in files or []:
            read_image(path)  # fail at start-up, with the file named, rather than at the first session
            name = path.stem
            while name in self._sources:
                name += "_"
            self._sources[name] = AvatarSource(name, "image", path)
        self._images: dict[str, np.ndarray] = {}
        self._face_boxes: dict[str, FaceBox | None] = {}
        self._lock = threading.Lock()
        self._uploads: list[str] = []  # oldest first
        self.max_uploads = max_uploads
        for thumb in sorted(enrolled.glob("*/thumb.jpg")) if enrolled and enrolled.is_dir() else []:
            self.add_enrolled(thumb.parent)

    def add_upload(self, stem: str, rgb: np.ndarray) -> tuple[str, list[str]]:
        """Add an uploaded image; returns its name and the names forgotten to make room."""
        name = stem
        number = 2
        while name in self._sources:
            name = f"{stem}-{number}"
            number += 1
        with self._lock:
            self._sources[name] = AvatarSource(name, "image", None)
            self._images[name] = rgb
            self._uploads.append(name)
            forgotten = []
            while len(self._uploads) > self.max_uploads:
                old = self._uploads.pop(0)
                self._sources.pop(old, None)
                self._images.pop(old, None)
                self._face_boxes.pop(old, None)
                forgotten.append(old)
        return name, forgotten

    def add_enrolled(self, folder: Path) -> str:
        """An avatar a backend enrolled from a video (``folder`` = NAME.KIND/ with a thumb.jpg): listed
        as an image (its thumbnail is the picture other backends animate) named NAME."""
        name = folder.name.split(".")[0]
        self._sources[name] = AvatarSource(name, "image", enrolled_picture(folder), enrolled=True)
        with self._lock:
            self._images.pop(name, None)  # a re-enrolled head's new thumbnail
        return name

    def names(self) -> list[str]:
        return list(self._sources)

    def source(self, name: str) -> AvatarSource:
        return self._sources[name]

    def image(self, name: str) -> np.ndarray | None:
        """RGB image of an avatar (None for the camera). Callers must not modify it."""
        source = self._sources[name]
        if source.kind == "camera":
            return None
        with self._lock:
            if name not in self._images:
                assert source.path is not None
                self._images[name] = read_image(source.path)
            return self._images[name]

    def framed(self, name: str, framing: str, width: int, height: int) -> np.ndarray | None:
        """The avatar's picture as a session at width x height sends it (``frame_portrait``, its
        face found once); None for the camera."""
        image = self.image(name)
        if image is None:
            return None
        return frame_portrait(image, framing, self._sources[name].enrolled, width, height,
                              lambda picture: self._face_box(name, picture))

    def _face_box(self, name: str, image: np.ndarray) -> FaceBox | None:
        with self._lock:
            if name in self._face_boxes:
                return self._face_boxes[name]
        box = face_box(image)
        with self._lock:
            self._face_boxes[name] = box
        return box

    def thumbnail_jpeg(self, name: str) -> bytes:
        image = self.image(name)
        if image is None:
            raise KeyError(name)
        scale = THUMBNAIL_SIDE / max(image.shape[:2])
        small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        return jpeg.tobytes()
