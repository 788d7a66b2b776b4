"""Backends for tests: real implementations of the contract with controllable speed or faults."""

from __future__ import annotations

import threading
import time
from typing import Sequence

import numpy as np

from engines.base import Avatar, Backend, FrameJob


class SlowBackend(Backend):
    """Paints each frame a grey level that encodes its slot, taking ``delay_s`` per job."""

    name = "slow"
    description = "test backend: half real time at 25 fps"
    delay_s = 0.08  # 0.5x real time at 25 fps
    batch_size = 1
    batches: list[int] = []

    def prepare_avatar(self, name: str, image: np.ndarray | None) -> Avatar:
        return Avatar(name=name, image=image)

    def generate(self, jobs: Sequence[FrameJob]) -> list[np.ndarray]:
        type(self).batches.append(len(jobs))
        time.sleep(self.delay_s * len(jobs))
        return [np.full_like(job.base_frame, (job.slot * 8) % 256) for job in jobs]


class BatchingBackend(SlowBackend):
    name = "batching"
    delay_s = 0.01
    batch_size = 4
    batches: list[int] = []


class BrokenBackend(SlowBackend):
    name = "broken"
    delay_s = 0.0
    mode = "raise"

    def generate(self, jobs: Sequence[FrameJob]) -> list[np.ndarray]:
        if self.mode == "raise":
            raise RuntimeError("model exploded")
        return [np.zeros((4, 4, 3), np.uint8) for _ in jobs]  # wrong shape


class FaultAfterBackend(SlowBackend):
    """Works for ``after`` frames of each stream, then fails as ``mode`` says: ``raise``, ``hang``
    (blocks until ``release`` is set: as good as forever for a session) or ``shape`` (frames of
    the wrong size)."""

    name = "faulty"
    delay_s = 0.0
    batches: list[int] = []
    after = 25
    mode = "raise"
    release = threading.Event()
    frames: dict[str, int] = {}

    def generate(self, jobs: Sequence[FrameJob]) -> list[np.ndarray]:
        for job in jobs:
            type(self).frames[job.stream_id] = type(self).frames.get(job.stream_id, 0) + 1
        if any(type(self).frames[job.stream_id] > self.after for job in jobs):
            if self.mode == "raise":
                raise RuntimeError("model exploded mid-stream")
            if self.mode == "hang":
                type(self).release.wait()
            if self.mode == "shape":
                return [np.zeros((8, 8, 3), np.uint8) for _ in jobs]
        return super().generate(jobs)

    def close_stream(self, stream_id: str) -> None:
        type(self).frames.pop(stream_id, None)


class FailingLoadBackend(SlowBackend):
    """A backend whose load() fails: it must be listed as unavailable with the reason."""

    name = "badload"

    def load(self) -> None:
        raise OSError("weights file /models/badload.onnx is truncated")


class SlowStartBackend(SlowBackend):
    """Takes ``first_s`` on its first call (a model or a face tracker warming up), then 10 ms."""

    name = "slowstart"
    delay_s = 0.01
    first_s = 0.5
    calls = 0

    def generate(self, jobs: Sequence[FrameJob]) -> list[np.ndarray]:
        type(self).calls += 1
        if type(self).calls == 1:
            time.sleep(self.first_s)
        return super().generate(jobs)
