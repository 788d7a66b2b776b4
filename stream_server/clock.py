"""The session's media clock: maps wall time to media time (0 = the first inbound audio sample).

Audio reaches us with jitter (network, and aiortc's audio jitter buffer, which hands packets
over in small bursts). The clock is set so that media time ``t`` is reached when the audio up
to ``t`` has usually arrived: the 95th percentile of (arrival - media time) over the last few
seconds. It follows that target at a bounded rate, so a jitter spike or a slow drift between the
sender's clock and ours moves it smoothly and never makes a jump. Both outgoing tracks and the
scheduler read this one clock, so whatever it does, audio and video move together.

Camera frames are placed on the same timeline by the peer's RTCP sender reports
(``sender_reports.py``). Until those have arrived, a frame is placed by when it would have
arrived on the camera's quickest path (its RTP time plus the least delay of the camera frames
held), against the *fast* mapping (the 5th percentile, followed at once): wall time w is about
media time ``w - fast_origin``, as if the camera's packets took the microphone's quickest path.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import time

PERCENTILE = 95.0
FAST_PERCENTILE = 5.0
SLEW_S = 0.001  # the most the origin moves per audio frame (50 ms per second of 20 ms frames)


class MediaClock:
    """Maps the media time of the inbound audio to wall time: the one clock both outgoing tracks are stamped from."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self.origin: float | None = None  # wall time of media time 0
        self.fast_origin: float | None = None  # the same for audio that took the quickest path
        self.started = asyncio.Event()
        self._offsets: collections.deque[tuple[float, float]] = collections.deque()  # (arrival, offset)
        self._sorted: list[float] = []  # the same offsets, sorted (percentiles on every frame stay cheap)

    @staticmethod
    def wall_now() -> float:
        return time.monotonic()

    def observe(self, media_s: float, arrival: float) -> None:
        """Audio up to ``media_s`` arrived at wall time ``arrival``."""
        offset = arrival - media_s
        self._offsets.append((arrival, offset))
        bisect.insort(self._sorted, offset)
        while self._offsets[0][0] < arrival - self.window_s:
            del self._sorted[bisect.bisect_left(self._sorted, self._offsets.popleft()[1])]
        self.origin = _approach(self.origin, _percentile(self._sorted, PERCENTILE))
        # not slewed: it only places camera frames, where following the quickest audio at once
        # costs at most a skipped or repeated camera frame, while a first packet that came late
        # (a backlog at the start) would otherwise leave the pictures ahead of the sound for seconds
        self.fast_origin = _percentile(self._sorted, FAST_PERCENTILE)
        self.started.set()

    def start_without_audio(self, wall: float) -> None:
        """No audio track: media time simply runs from ``wall``."""
        if self.origin is None:
            self.origin = self.fast_origin = wall
            self.started.set()

    def media_now(self) -> float:
        assert self.origin is not None, "the clock has not started"
        return self.wall_now() - self.origin

    def wall(self, media_s: float) -> float:
        assert self.origin is not None, "the clock has not started"
        return self.origin + media_s

    @property
    def jitter_s(self) -> float:
        """How much later than the quickest audio the clock runs, to wait for most of it."""
        if self.origin is None or self.fast_origin is None:
            return 0.0
        return self.origin - self.fast_origin

    def capture_wall(self, media_s: float) -> float:
        """Wall time at which a camera frame showing ``media_s`` arrives (see the module doc)."""
        assert self.fast_origin is not None, "the clock has not started"
        return self.fast_origin + media_s


def _percentile(ordered: list[float], percent: float) -> float:
    """The percentile of sorted values, interpolated linearly (numpy's default method)."""
    position = percent / 100.0 * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _approach(current: float | None, target: float) -> float:
    """Move towards ``target`` by at most SLEW_S (jump straight there the first time)."""
    if current is None:
        return target
    return current + min(SLEW_S, max(-SLEW_S, target - current))
