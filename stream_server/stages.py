"""Per-stage timings of generated frames: where the time from the audio to the encoder goes.

For a generated frame, the server latency minus the lookahead splits into consecutive stages:

- ``features``: the newest audio packet it depends on arrived -> resampled and its log-mel ready
- ``to_dispatch``: -> the scheduler handed the slot to the backend's worker
- ``queue``: -> the worker thread took it (waiting behind other jobs, of any session)
- ``build``: -> its job was built (audio window, base frame converted to the output size)
- ``backend``: -> the backend's ``generate`` returned (the whole batch the frame was in)
- ``hold``: -> the slot's deadline came and it was taken for sending (the budget's slack)
- ``compose``: -> converted for the encoder (interpolation, when the slot needs it, and YUV)

Interpolated and repeated frames have no generation of their own; only generated frames are
broken down.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

STAGES = ("features", "to_dispatch", "queue", "build", "backend", "hold", "compose")


@dataclass
class SlotTimes:
    """Wall times (monotonic seconds) of one slot's generation."""

    dispatched: float
    picked: float | None = None
    built: float | None = None
    finished: float | None = None


def stage_durations(
    arrival: float, features_s: float, times: SlotTimes, emitted: float, handoff: float
) -> dict[str, float] | None:
    """The stages of one generated frame in seconds, or None if it was handed out before its
    audio arrived (late audio: there is no audio-to-frame path to split)."""
    if times.finished is None or times.picked is None or times.built is None:
        return None
    features_ready = arrival + features_s
    if times.dispatched < features_ready:
        return None
    return {
        "features": features_s,
        "to_dispatch": times.dispatched - features_ready,
        "queue": times.picked - times.dispatched,
        "build": times.built - times.picked,
        "backend": times.finished - times.built,
        "hold": emitted - times.finished,
        "compose": handoff - emitted,
    }


class TraceWriter:
    """One JSON line per output frame (``serve --trace FILE``), for offline analysis."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] = path.open("a", buffering=1)  # line-buffered: complete lines even if killed

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self._file.close()
