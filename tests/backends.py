"""Backends for tests: real implementations of the contract with controllable speed or faults."""

from __future__ import annotations

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
