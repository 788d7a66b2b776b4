"""``passthrough``: returns the base frame unchanged. The fallback, and the baseline for tests.
It ignores the job's ``expression`` (there is no mouth to scale)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from engines.base import Avatar, Backend, FrameJob


class PassthroughBackend(Backend):
    name = "passthrough"
    description = "Returns the base frame unchanged (no lip-sync); the fallback and test baseline."
    lookahead_s = 0.0
    batch_size = 8
    quality_rank = None  # no lip-sync: never chosen by --backend auto

    def prepare_avatar(self, name: str, image: np.ndarray | None) -> Avatar:
        return Avatar(name=name, image=image)

    def generate(self, jobs: Sequence[FrameJob]) -> list[np.ndarray]:
        return [job.base_frame for job in jobs]
