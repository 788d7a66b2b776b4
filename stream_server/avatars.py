"""The avatars a session can pick: the live camera, the bundled portrait, and image files."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engines.images import read_image

ASSETS = Path(__file__).resolve().parent / "assets"
CAMERA = "camera"
BUNDLED = {"astronaut": ASSETS / "astronaut.jpg"}
THUMBNAIL_SIDE = 160


@dataclass(frozen=True)
class AvatarSource:
    name: str
    kind: str  # "camera" or "image"
    path: Path | None = None

    def to_json(self) -> dict[str, str | None]:
        url = f"/avatars/{self.name}.jpg" if self.kind == "image" else None
        return {"name": self.name, "kind": self.kind, "url": url}


class AvatarLibrary:
    """Avatar names -> sources; images are read once and kept. Uploaded images live in memory
    only, at most ``max_uploads`` of them (the oldest is forgotten when a new one comes)."""

    def __init__(self, files: list[Path] | None = None, max_uploads: int = 16) -> None:
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
        self._lock = threading.Lock()
        self._uploads: list[str] = []  # oldest first
        self.max_uploads = max_uploads

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
                forgotten.append(old)
        return name, forgotten

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

    def thumbnail_jpeg(self, name: str) -> bytes:
        image = self.image(name)
        if image is None:
            raise KeyError(name)
        scale = THUMBNAIL_SIDE / max(image.shape[:2])
        small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        return jpeg.tobytes()
