"""The session's media clock: maps wall time to media time (0 = the first inbound audio sample).

Audio reaches us with jitter (network, and aiortc's audio jitter buffer, which hands packets
over in small bursts). The clock is set so that media time ``t`` is reached when the audio up
to ``t`` has usually arrived: the 95th percentile of (arrival - media time) over the last few
seconds. It follows that target at a bounded rate, so a jitter spike or a slow drift between the
sender's clock and ours moves it smoothly and never makes a jump. Both outgoing tracks and the
scheduler read this one clock, so whatever it does, audio and video move together.

Camera frames are placed on the same timeline by the peer's RTCP sender reports
(``sender_reports.py``). Until those have arrived, a frame is placed by when its first packet
would have arrived on the camera's quickest path (its RTP time plus the least delay of the
camera frames held), against the *network* mapping of the audio (the 5th percentile of when
its packets arrived, before aiortc's jitter buffer, followed at once): wall time w is about media
time ``w - camera_origin``, as if the camera's packets took the microphone's quickest path.
Packet arrivals, not deliveries, because the two streams' jitter buffers hold them differently
(``packet_arrivals.py``).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import time

PERCENTILE = 95.0
FAST_PERCENTILE = 5.0
SLEW_S = 0.001  # the most the origin moves per audio frame (50 ms per second of 20 ms frames)


class OffsetWindow:
    """The last ``window_s`` seconds of (arrival - media time) offsets, kept sorted too so that a
    percentile on every audio frame stays cheap."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._offsets: collections.deque[tuple[float, float]] = collections.deque()  # (arrival, offset)
        self._sorted: list[float] = []

    def add(self, media_s: float, arrival: float) -> None:
        offset = arrival - media_s
        self._offsets.append((arrival, offset))
        bisect.insort(self._sorted, offset)
        self.expire(arrival)

    def expire(self, now: float) -> None:
        """Forget what arrived more than ``window_s`` before ``now``."""
        while self._offsets and self._offsets[0][0] < now - self.window_s:
            del self._sorted[bisect.bisect_left(self._sorted, self._offsets.popleft()[1])]

    def percentile(self, percent: float) -> float | None:
        return _percentile(self._sorted, percent) if self._sorted else None


class MediaClock:
    """Maps the media time of the inbound audio to wall time: the one clock both outgoing tracks are stamped from."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.origin: float | None = None  # wall time of media time 0
        self.fast_origin: float | None = None  # the same for audio that took the quickest path
        self.camera_origin: float | None = None  # the same by packet arrival, for placing camera frames
        self.started = asyncio.Event()
        self._delivered = OffsetWindow(window_s)  # when aiortc handed the audio over
        self._network = OffsetWindow(window_s)  # when its packets arrived
        self._camera = OffsetWindow(window_s)  # when camera frames were handed over (camera avatars only)

    @staticmethod
    def wall_now() -> float:
        return time.monotonic()

    def observe(self, media_s: float, arrival: float, packet_arrival: float | None = None) -> None:
        """Audio up to ``media_s`` was handed over at wall time ``arrival``; its packet had
        arrived at ``packet_arrival`` (None if unknown)."""
        self._delivered.add(media_s, arrival)
        self._camera.expire(arrival)
        target = self._delivered.percentile(PERCENTILE)
        assert target is not None
        camera = self._camera.percentile(PERCENTILE)
        self.origin = _approach(self.origin, target if camera is None else max(target, camera))
        # not slewed: it only places camera frames, where following the quickest audio at once
        # costs at most a skipped or repeated camera frame, while a first packet that came late
        # (a backlog at the start) would otherwise leave the pictures ahead of the sound for seconds
        self.fast_origin = self._delivered.percentile(FAST_PERCENTILE)
        if packet_arrival is not None:
            self._network.add(media_s, packet_arrival)
        network = self._network.percentile(FAST_PERCENTILE)
        self.camera_origin = self.fast_origin if network is None else network
        self.started.set()

    def observe_camera(self, taken_s: float, arrival: float) -> None:
        """A camera avatar's frame taken at media time ``taken_s`` was handed over at wall time
        ``arrival``: media time t is then reached only once the camera frame of t has usually
        come too, or the frame built for t would show an older picture than the sound (the
        camera's path, with its decoding and the video jitter buffer's wait for the next frame,
        can be slower than the microphone's)."""
        self._camera.add(taken_s, arrival)

    def start_without_audio(self, wall: float) -> None:
        """No audio track: media time simply runs from ``wall``."""
        if self.origin is None:
            self.origin = self.fast_origin = self.camera_origin = wall
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
        """Wall time at which the first packet of a camera frame showing ``media_s`` arrives (see the module doc)."""
        assert self.camera_origin is not None, "the clock has not started"
        return self.camera_origin + media_s


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
