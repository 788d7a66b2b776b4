"""Which backends exist, and loading each one once per process.

Adding a backend is one folder and one line: ``engines/<name>/backend.py`` with a subclass of
``engines.base.Backend`` (and, as needed, ``weights.py`` for its file layout, ``model.py`` for
its architecture, ``export.py`` for its export), and ``"<name>": "engines.<name>.backend:Class"``
in ``BACKENDS``. Nothing else names a backend: ``doctor`` prints what ``Backend.files()`` lists,
``--backend auto`` ranks the backends by their ``quality_rank``, and ``python -m stream_server
export <name>`` is offered for every backend whose ``export`` is set.

Backends are imported lazily so that a backend whose dependencies are missing never breaks the
others: it is listed as unavailable with the reason.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engines.base import AudioWindow, AvatarError, Backend, BackendError, BackendInfo, FrameJob, describe
from engines.features import SILENCE
from engines.images import fit_cover, read_image

log = logging.getLogger(__name__)

# name -> "module:Class". One line per backend.
BACKENDS: dict[str, str] = {
    "mesh": "engines.mesh.backend:MeshBackend",
    "passthrough": "engines.passthrough.backend:PassthroughBackend",
    "musetalk": "engines.musetalk.backend:MuseTalkBackend",
    "vasa": "engines.vasa.backend:VasaBackend",
    "gaussian": "engines.gaussian.backend:GaussianBackend",
}

DEFAULT_BACKEND = "mesh"
FALLBACK_BACKEND = "passthrough"


def backend_names() -> list[str]:
    return list(BACKENDS)


def load_entry(entry: str) -> Any:
    """What a ``"module:name"`` entry names, importing the module; ImportError if it cannot."""
    module_name, _, attribute = entry.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def backend_class(name: str) -> type[Backend]:
    """Import a backend class; raises KeyError for unknown names, ImportError if it cannot load."""
    return load_entry(BACKENDS[name])


def importable_backends() -> dict[str, type[Backend]]:
    """Every registered backend's class that imports here, by name. One that does not import is
    left out: ``BackendRegistry.unavailable_reason`` gives its import error."""
    classes = {}
    for name in backend_names():
        try:
            classes[name] = backend_class(name)
        except Exception:  # an import error must not take the others down
            continue
    return classes


class BackendRegistry:
    """Loads each backend at most once and remembers why one is unavailable.

    ``calibration_portrait`` is the image file every backend is calibrated on when it loads
    (:func:`measure_fps`). It is an argument with no default because the portrait belongs to
    whoever uses the registry (the server passes its bundled avatar), not to ``engines``, and a
    calibration without a real face to find would measure a cheaper path than camera mode.
    """

    def __init__(self, calibration_portrait: Path) -> None:
        self.calibration_portrait = calibration_portrait
        self._loaded: dict[str, Backend] = {}
        self._typical_fps: dict[str, float] = {}
        self._errors: dict[str, str] = {}
        self._lock = threading.Lock()

    def unavailable_reason(self, name: str) -> str | None:
        if name in self._errors:
            return self._errors[name]
        try:
            return backend_class(name).unavailable_reason()
        except Exception as exc:  # an import error must not take the server down
            return f"cannot import backend {name!r}: {exc}"

    def info(self, name: str) -> BackendInfo:
        reason = self.unavailable_reason(name)
        try:
            cls = backend_class(name)
        except Exception:
            return BackendInfo(name, "", False, reason or "cannot import", 0.0, 1, None)
        return describe(cls, reason, self._typical_fps.get(name))

    def infos(self) -> list[BackendInfo]:
        return [self.info(name) for name in backend_names()]

    def get(self, name: str) -> Backend:
        """Return the loaded backend, loading and calibrating it on first use (blocking)."""
        with self._lock:
            if name in self._loaded:
                return self._loaded[name]
            reason = self.unavailable_reason(name)
            if reason:
                raise RuntimeError(reason)
            try:
                backend = backend_class(name)()
                started = time.perf_counter()
                backend.load()
                log.info("loaded backend %s in %.1f s", name, time.perf_counter() - started)
                try:
                    self._typical_fps[name] = measure_fps(backend, self.calibration_portrait)
                except AvatarError as exc:  # it animates only its own avatars (an enrolled head)
                    log.info("backend %s: speed not measured at load (%s)", name, exc)
            except Exception as exc:
                self._errors[name] = f"failed to load: {exc}"
                if isinstance(exc, BackendError):  # a clear message written for the user: no traceback
                    log.error("backend %s failed to load: %s", name, exc)
                else:
                    log.exception("backend %s failed to load", name)
                raise RuntimeError(self._errors[name]) from exc
            self._loaded[name] = backend
            return backend

    def mark_failed(self, name: str, reason: str) -> None:
        """Take a loaded backend out of service (it hung): listed as unavailable with the reason."""
        self._errors[name] = reason  # no lock: a load in progress must not block the event loop
        log.error("backend %s taken out of service: %s", name, reason)

    def clear_failure(self, name: str) -> None:
        """Put a backend taken out of service back (its stuck call returned)."""
        if self._errors.pop(name, None) is not None:
            log.warning("backend %s is back in service", name)

    def loaded(self) -> list[Backend]:
        return list(self._loaded.values())


def measure_fps(backend: Backend, portrait: Path, size: tuple[int, int] = (512, 512), frames: int = 8) -> float:
    """Frames per second of ``generate`` on this machine, in camera mode (the dearer one: a
    face to find in every frame) on the ``portrait`` image file, with silence."""
    height, width = size
    face = np.ascontiguousarray(fit_cover(read_image(portrait), width, height))
    avatar = backend.prepare_avatar("calibration", None)
    window = AudioWindow(
        0.0, backend.context_s, backend.lookahead_s,
        np.zeros(round((backend.context_s + backend.lookahead_s) * 16000), np.float32),
        np.full((round((backend.context_s + backend.lookahead_s) * 100), 80), SILENCE, np.float32),
    )
    # a slightly different frame each time, as a camera gives, so no per-frame cache helps
    bases = [cv2.add(face, np.full_like(face, i % 2)) for i in range(frames + 1)]
    stream = f"calibration-{time.monotonic_ns()}"  # a closed stream's id is never served again
    jobs = [FrameJob(stream, i, i / 25.0, window, bases[i], avatar) for i in range(frames + 1)]
    backend.generate(jobs[:1])  # warm-up
    started = time.perf_counter()
    for start in range(1, frames + 1, backend.batch_size):
        backend.generate(jobs[start : start + backend.batch_size])
    elapsed = max(time.perf_counter() - started, 1e-6)
    backend.close_stream(stream)
    return round(frames / elapsed, 1)
