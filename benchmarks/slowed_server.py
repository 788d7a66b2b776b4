"""The server with one extra backend, ``slowed``, for the scheduler stress benchmark.

``slowed`` returns the base frame (as ``passthrough`` does, so the sender's frame stamps come
back readable) after sleeping as long as a backend running at ``SPEED`` x real time would take,
plus, with probability ``STALL_PROB`` per frame, a stall of ``STALL_S``. Settings come from the
environment (BENCH_SPEED, BENCH_STALL_PROB, BENCH_STALL_S, BENCH_FPS).

    BENCH_SPEED=0.5 python -m benchmarks.slowed_server serve --port 8080
"""

from __future__ import annotations

import os
import random
import sys
import time
from typing import Sequence

import numpy as np

from engines import registry
from engines.base import Avatar, Backend, FrameJob


class SlowedBackend(Backend):
    name = "slowed"
    description = "benchmark backend: the base frame, at a set fraction of real time, with random stalls"
    lookahead_s = 0.1  # as mesh's
    batch_size = 1

    def __init__(self) -> None:
        fps = float(os.environ.get("BENCH_FPS", "25"))
        self.frame_s = 1.0 / (float(os.environ.get("BENCH_SPEED", "1.0")) * fps)
        self.stall_prob = float(os.environ.get("BENCH_STALL_PROB", "0"))
        self.stall_s = float(os.environ.get("BENCH_STALL_S", "0.5"))
        self._random = random.Random(0)

    def prepare_avatar(self, name: str, image: np.ndarray | None) -> Avatar:
        return Avatar(name=name, image=image)

    def generate(self, jobs: Sequence[FrameJob]) -> list[np.ndarray]:
        for _ in jobs:
            stall = self.stall_s if self._random.random() < self.stall_prob else 0.0
            time.sleep(self.frame_s + stall)
        return [job.base_frame for job in jobs]


registry.BACKENDS["slowed"] = "benchmarks.slowed_server:SlowedBackend"

if __name__ == "__main__":
    from stream_server.cli import main

    sys.exit(main())
