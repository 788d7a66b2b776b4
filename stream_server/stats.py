"""Per-session figures pushed to the page twice a second and used by the benchmarks."""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

from stream_server.scheduler import FrameKind
from stream_server.stages import STAGES

WINDOW_FRAMES = 250  # latency percentiles over the last 10 s at 25 fps


def percentiles_ms(values: collections.deque[float] | list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "last": None}
    array = np.asarray(values) * 1000.0
    return {
        "p50": round(float(np.percentile(array, 50)), 1),
        "p95": round(float(np.percentile(array, 95)), 1),
        "last": round(float(array[-1]), 1),
    }


class SessionStats:
    def __init__(self, session_id: str, backend: str, fps_target: int) -> None:
        self.session_id = session_id
        self.backend = backend
        self.fps_target = fps_target
        self.sent_at: collections.deque[float] = collections.deque(maxlen=256)  # hand-off wall times
        self.latency_s: collections.deque[float] = collections.deque(maxlen=WINDOW_FRAMES)
        self.backend_s: collections.deque[float] = collections.deque(maxlen=WINDOW_FRAMES)
        self.latencies_recorded = 0  # all time, so readers of the window can tell what is new
        self.sent_before_audio = 0  # frames sent before the audio they depend on had arrived
        # per-stage seconds of the generated frames (stream_server/stages.py)
        self.stages_s: dict[str, collections.deque[float]] = {
            stage: collections.deque(maxlen=WINDOW_FRAMES) for stage in STAGES
        }

    def on_frame(
        self, kind: FrameKind, handoff: float, latency_s: float | None, stages: dict[str, float] | None = None
    ) -> None:
        self.sent_at.append(handoff)
        for stage, seconds in (stages or {}).items():
            self.stages_s[stage].append(seconds)
        if latency_s is None:
            self.sent_before_audio += 1
        else:
            self.latency_s.append(latency_s)
            self.latencies_recorded += 1

    def fps_out(self) -> float | None:
        """Frames handed to the encoder over the last second."""
        if len(self.sent_at) < 2:
            return None
        newest = self.sent_at[-1]
        recent = [t for t in self.sent_at if t > newest - 1.0]
        span = newest - recent[0]
        return round((len(recent) - 1) / span, 1) if span > 0 else None

    def snapshot(
        self,
        avatar: str,
        counts: dict[str, int],
        delay_s: float,
        lookahead_s: float,
        jitter_s: float,
        backend_stats: dict[str, int],
        uptime_s: float,
    ) -> dict[str, Any]:
        return {
            "type": "stats",
            "session_id": self.session_id,
            "backend": self.backend,
            "avatar": avatar,
            "fps_target": self.fps_target,
            "fps_out": self.fps_out(),
            "frames": counts,
            "latency_ms": percentiles_ms(self.latency_s),
            "delay_ms": round(delay_s * 1000.0, 1),
            "lookahead_ms": round(lookahead_s * 1000.0, 1),
            "jitter_ms": round(jitter_s * 1000.0, 1),
            "sent_before_audio": self.sent_before_audio,
            "backend_stats": backend_stats,
            "backend_ms": percentiles_ms(self.backend_s),
            "stages_ms": {stage: percentiles_ms(values) for stage, values in self.stages_s.items()},
            "uptime_s": round(uptime_s, 1),
        }
