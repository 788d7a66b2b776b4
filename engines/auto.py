"""``--backend auto``: the best-looking backend that holds the frame rate on this machine.

Backends are tried in order of how they look: each declares its ``quality_rank`` (higher looks
better; None, for a backend that does no lip-sync, is never chosen), and ``ranked`` orders the
registered backends by it. Whether one holds the
frame rate is measured, not looked up: the registry's calibration (``measure_fps``: generate()
in camera mode on the registry's calibration portrait, which the server gives as its bundled one)
must reach ``HEADROOM`` times the frame rate, since encoding, audio and the event loop need the
rest of the machine. A measurement is cached per
backend code, model files and machine (CPU, cores, GPUs, ONNX Runtime providers) in
``$XDG_CACHE_HOME/lipsync-stream/calibration.json``, so later starts need not load a backend
only to find it too slow. If none holds the rate, the fastest is chosen and the reason says so.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engines.registry import BackendRegistry, backend_class, importable_backends

log = logging.getLogger(__name__)

AUTO = "auto"
HEADROOM = 1.25


@dataclass
class Candidate:
    backend: str
    available: bool
    fps: float | None = None  # generate() frames per second on this machine
    cached: bool = False  # the figure came from the calibration cache
    note: str = ""  # why unavailable, or whether it holds the rate


@dataclass
class AutoChoice:
    backend: str
    reason: str
    fps_wanted: float
    candidates: list[Candidate] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lipsync-stream" / "calibration.json"


def machine_key() -> str:
    """What a backend's speed depends on besides its own code and files."""
    from engines.runtime.providers import available_providers
    from engines.machine import cpu_model, gpus

    cpu = cpu_model() or platform.processor() or platform.machine()
    gpu_names = ",".join(gpu["name"] for gpu in gpus()[0])
    return f"{cpu}|{os.cpu_count()}|{gpu_names}|{','.join(available_providers())}"


def backend_key(name: str) -> str:
    """A hash of the backend's code (its package's .py files) and of its model files' identity."""
    cls = backend_class(name)
    digest = hashlib.sha256(name.encode())
    package = Path(inspect.getfile(cls)).parent
    for source in sorted(package.glob("*.py")):
        digest.update(source.read_bytes())
    digest.update(cls.calibration_key().encode())
    return digest.hexdigest()[:16]


def ranked() -> list[str]:
    """The backends auto may choose, best looking (highest ``quality_rank``) first; equal ranks
    keep the registry's order."""
    ranks: dict[str, int] = {}
    for name, cls in importable_backends().items():
        if cls.quality_rank is not None:
            ranks[name] = cls.quality_rank
    return sorted(ranks, key=lambda name: -ranks[name])


class CalibrationCache:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_path()
        try:
            self._entries: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self._entries = {}  # missing or corrupt: measure again

    def get(self, key: str) -> float | None:
        entry = self._entries.get(key)
        return float(entry["fps"]) if isinstance(entry, dict) and "fps" in entry else None

    def put(self, key: str, fps: float) -> None:
        self._entries[key] = {"fps": fps, "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self._entries, indent=1))
        except OSError as exc:
            log.warning("could not write the calibration cache %s: %s", self.path, exc)


def choose_backend(registry: BackendRegistry, fps: float, cache: CalibrationCache | None = None) -> AutoChoice:
    """Measure (or recall) each candidate in order of preference and take the first that holds."""
    cache = cache or CalibrationCache()
    machine = machine_key()
    needed = fps * HEADROOM
    candidates: list[Candidate] = []
    for name in ranked():
        reason = registry.unavailable_reason(name)
        if reason:
            candidates.append(Candidate(name, False, note=reason))
            continue
        key = f"{name}|{backend_key(name)}|{machine}"
        measured = cache.get(key)
        candidate = Candidate(name, True, measured, cached=measured is not None)
        if measured is None:
            log.info("auto: calibrating %s on this machine (first time; loads the backend)", name)
            try:
                registry.get(name)
            except RuntimeError as exc:
                candidates.append(Candidate(name, False, note=str(exc)))
                continue
            measured = candidate.fps = registry.info(name).typical_fps
            if measured is not None:
                cache.put(key, measured)
        holds = measured is not None and measured >= needed
        candidate.note = f"{measured:g} fps {'>=' if holds else '<'} {needed:g} needed" if measured is not None else "not measured"
        candidates.append(candidate)
        if holds:
            return AutoChoice(name, f"{name} is the best-looking backend that holds {fps:g} fps here ({candidate.note})", fps, candidates)
    measured_ones = [c for c in candidates if c.fps is not None]
    if not measured_ones:
        raise RuntimeError("auto: no lip-sync backend is available: " + "; ".join(f"{c.backend}: {c.note}" for c in candidates))
    fastest = max(measured_ones, key=lambda c: c.fps or 0.0)
    return AutoChoice(
        fastest.backend,
        f"no backend holds {fps:g} fps here ({needed:g} needed); {fastest.backend} is the fastest ({fastest.fps:g} fps): expect repeated frames",
        fps,
        candidates,
    )
