"""The session's media clock: maps wall time to media time (0 = the first inbound audio sample).

The mapping is the smallest (arrival - media time) seen over the last few seconds of audio:
the packets that came fastest define "on time", so jitter never pushes the clock later, while
a slow drift between the sender's clock and ours is still followed. Both outgoing tracks and
the scheduler read this one clock.
"""

from __future__ import annotations

import asyncio
import collections
import time


class MediaClock:
    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self.origin: float | None = None  # wall time of media time 0
        self.started = asyncio.Event()
        self._offsets: collections.deque[tuple[float, float]] = collections.deque()  # (arrival, offset), offsets increasing

    @staticmethod
    def wall_now() -> float:
        return time.monotonic()

    def observe(self, media_s: float, arrival: float) -> None:
        """Audio up to ``media_s`` arrived at wall time ``arrival``."""
        offset = arrival - media_s
        while self._offsets and self._offsets[-1][1] >= offset:
            self._offsets.pop()  # a sliding-window minimum: larger offsets can never be the min again
        self._offsets.append((arrival, offset))
        while self._offsets[0][0] < arrival - self.window_s:
            self._offsets.popleft()
        self.origin = self._offsets[0][1]
        self.started.set()

    def start_without_audio(self, wall: float) -> None:
        """No audio track: media time simply runs from ``wall``."""
        if self.origin is None:
            self.origin = wall
            self.started.set()

    def media_now(self) -> float:
        assert self.origin is not None, "the clock has not started"
        return self.wall_now() - self.origin

    def wall(self, media_s: float) -> float:
        assert self.origin is not None, "the clock has not started"
        return self.origin + media_s
