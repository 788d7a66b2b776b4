"""One frame ledger per live stream: what each slot cost and when it went out, kept once for the
page's stats, the Prometheus metrics and the trace file.

The pipeline tells it when a slot was handed to the worker, what the worker reported when the
frame came back, and when the slot was sent; from these it derives the server latency (DESIGN.md:
the newest audio a frame depends on arriving -> the frame handed to the encoder, plus the
lookahead) and the per-stage timings of generated frames (stream_server/stages.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stream_server import metrics
from stream_server.scheduler import Counts, Emission, FrameKind
from stream_server.stages import SlotTimes, TraceWriter, stage_durations
from stream_server.stats import SessionStats
from stream_server.worker import JobResult

COUNTED = ("generated", "interpolated", "repeated", "dropped", "unsent")


class FrameLedger:
    def __init__(self, stream_id: str, backend: str, fps: int, trace: TraceWriter | None = None) -> None:
        self.stream_id = stream_id
        self.stats = SessionStats(stream_id, backend, fps)
        self._trace = trace
        self._slot_times: dict[int, SlotTimes] = {}  # slots handed to the backend, not yet sent
        self._counted = Counts().as_dict()

    @property
    def backend(self) -> str:
        return self.stats.backend

    def switched(self, backend: str) -> None:
        """The stream moved to another backend (a fallback): later frames count for it."""
        self.stats.backend = backend

    def dispatched(self, slot: int, wall: float) -> None:
        self._slot_times[slot] = SlotTimes(dispatched=wall)

    def generated(self, slot: int, result: JobResult) -> None:
        self.stats.backend_s.append(result.backend_s)
        metrics.BACKEND_TIME.labels(self.backend).observe(result.backend_s)
        times = self._slot_times.get(slot)
        if times is not None:
            times.picked, times.built, times.finished = result.picked, result.built, result.finished

    def sent(
        self,
        emission: Emission[np.ndarray],
        emitted: float,
        handoff: float,
        audio: tuple[float, float] | None,
        lookahead_s: float,
        counts: Counts,
    ) -> None:
        """Slot ``emission.slot`` was taken for sending at wall time ``emitted`` and handed to the
        encoder at ``handoff``; ``audio`` is (arrival, features seconds) of the newest audio it
        depends on, None if that has not arrived."""
        latency = None if audio is None else handoff - audio[0] + lookahead_s
        times = self._slot_times.pop(emission.slot, None)
        for old in [s for s in self._slot_times if s < emission.slot]:
            del self._slot_times[old]  # dropped slots: nothing will be sent for them
        stages = None
        if emission.kind is FrameKind.GENERATED and audio is not None and times is not None:
            stages = stage_durations(audio[0], audio[1], times, emitted, handoff)
        self.stats.on_frame(emission.kind, handoff, latency, stages)
        if self._trace is not None:
            self._trace.write(self._trace_line(emission, handoff, audio, latency, stages))
        now_counted = counts.as_dict()
        for kind in COUNTED:
            if now_counted[kind] > self._counted[kind]:
                metrics.FRAMES.labels(self.backend, kind).inc(now_counted[kind] - self._counted[kind])
        self._counted = now_counted
        if latency is not None:
            metrics.SERVER_LATENCY.labels(self.backend).observe(latency)

    def _trace_line(
        self, emission: Emission[np.ndarray], handoff: float, audio: tuple[float, float] | None,
        latency: float | None, stages: dict[str, float] | None,
    ) -> dict[str, Any]:
        return {
            "session": self.stream_id, "slot": emission.slot, "kind": emission.kind.value, "handoff": round(handoff, 6),
            "audio_arrival": None if audio is None else round(audio[0], 6),
            "latency_ms": None if latency is None else round(latency * 1000, 2),
            "stages_ms": None if stages is None else {k: round(v * 1000, 2) for k, v in stages.items()},
        }

    def close(self) -> None:
        self._slot_times.clear()
        try:
            metrics.FPS_OUT.remove(self.stream_id)
        except KeyError:
            pass
