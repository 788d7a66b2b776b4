"""Inbound camera frames, the media time each was taken at, and the base frames cut from them.

A camera avatar animates the peer's own camera: the frame sent for slot ``k`` is built on the
camera frame taken nearest to the slot's media time. Once both of the peer's streams have sent
an RTCP sender report, each frame's RTP time maps to the peer's NTP clock and from there to the
microphone's media time, as browsers place them (``taken_at``). Before that (about the first
second) frames are placed by their own RTP times plus the least delay any held frame had.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from typing import Callable, NamedTuple

import av
import numpy as np

from stream_server.audio_in import AudioIn, RtpTicks
from stream_server.clock import MediaClock
from stream_server.frames import video_frame_to_rgb
from stream_server.sender_reports import SenderReports

BLANK_GREY = 32  # what a camera avatar shows before its first frame


class HeldFrame(NamedTuple):
    arrival: float  # wall time it arrived
    taken: float | None  # media time it was taken at, by sender reports (None before them)
    rtp_s: float  # its RTP time in seconds from the first frame's
    frame: av.VideoFrame


class CameraIn:
    """The last second of inbound camera frames, with their arrival times and, once the peer's
    sender reports allow it, the media time (on the microphone's timeline) each was taken at."""

    def __init__(self) -> None:
        self.frames: collections.deque[HeldFrame] = collections.deque(maxlen=32)
        self.first = asyncio.Event()
        self.by_reports = 0  # frames placed by sender reports (the rest by RTP time and the quickest arrival)
        self._rtp = RtpTicks()

    def push(self, frame: av.VideoFrame, arrival: float, media_s: float | None) -> None:
        self.frames.append(HeldFrame(arrival, media_s, self._rtp_s(frame, arrival), frame))
        self.by_reports += media_s is not None
        self.first.set()

    def newest_taken(self, clock: MediaClock) -> float | None:
        """Media time the newest frame was taken at: by sender reports, else on the quickest
        path (as ``at`` places it); None before the clock has started."""
        newest = self.frames[-1]
        if newest.taken is not None:
            return newest.taken
        if clock.camera_origin is None:
            return None
        return newest.rtp_s + self._quickest() - clock.camera_origin

    def at(self, media_s: float, arrival_by: float) -> av.VideoFrame | None:
        """The frame taken nearest to media time ``media_s``. Without sender reports yet, the
        newest frame that would have arrived by wall time ``arrival_by`` on the quickest path
        (else the oldest held)."""
        if self.frames and self.frames[-1].taken is not None:
            placed = [(abs(held.taken - media_s), n) for n, held in enumerate(self.frames) if held.taken is not None]
            return self.frames[min(placed)[1]].frame
        # Frames are placed by their own RTP times plus the least delay any held frame had, not
        # by when each arrived: frames held up together (a stall, a server busy starting the
        # session) and then delivered in a burst would otherwise all count as taken at the burst.
        quickest = self._quickest()
        chosen = None
        for held in self.frames:
            if held.rtp_s + quickest > arrival_by and chosen is not None:
                break
            chosen = held.frame
        return chosen

    def _quickest(self) -> float:
        """The least (arrival - RTP time) of the frames held."""
        return min((held.arrival - held.rtp_s for held in self.frames), default=0.0)

    def _rtp_s(self, frame: av.VideoFrame, arrival: float) -> float:
        """The frame's RTP time in seconds from the first frame's (its arrival if unstamped:
        aiortc stamps every frame)."""
        if frame.pts is None or frame.time_base is None:
            return arrival
        return self._rtp.advance(frame.pts) * float(frame.time_base)


def taken_at(frame: av.VideoFrame, reports: dict[str, SenderReports], audio_in: AudioIn) -> float | None:
    """Media time at which the peer took a camera frame, by the sender reports of both streams
    (``reports`` by kind; None until one of each has arrived)."""
    video, audio = reports.get("video"), reports.get("audio")
    if video is None or audio is None or frame.pts is None or frame.time_base is None or not audio_in.clock_rate:
        return None
    sender_s = video.sender_time(int(frame.pts), round(1 / frame.time_base))
    audio_pts = None if sender_s is None else audio.pts_at(sender_s, audio_in.clock_rate)
    return None if audio_pts is None else audio_in.media_of_pts(audio_pts)


class CameraFrames:
    """Base frames from the live camera: the frame taken nearest to each slot, at the output
    size (a grey picture before the first one)."""

    def __init__(self, camera: CameraIn, clock: MediaClock, size: tuple[int, int] | None) -> None:
        self.camera, self.clock = camera, clock
        self.size = size  # None until the first frame gives the camera's own size
        self._cache: tuple[av.VideoFrame, np.ndarray] | None = None
        self._blank: np.ndarray | None = None
        self._lock = threading.Lock()

    def pick(self, time_s: float) -> Callable[[], np.ndarray]:
        chosen = self.camera.at(time_s, self.clock.capture_wall(time_s))
        return lambda: self._rgb(chosen)

    def blank(self) -> np.ndarray:
        assert self.size is not None
        width, height = self.size
        if self._blank is None or self._blank.shape[:2] != (height, width):
            self._blank = np.full((height, width, 3), BLANK_GREY, np.uint8)
        return self._blank

    def _rgb(self, frame: av.VideoFrame | None) -> np.ndarray:
        """The frame at the output size (worker or compose thread)."""
        if frame is None:
            return self.blank()
        # the worker and the compose thread may both want the same frame: PyAV must not convert
        # one frame in two threads at once (it crashed doing so), and once is enough anyway
        with self._lock:
            cached = self._cache
            if cached is not None and cached[0] is frame:
                return cached[1]
            assert self.size is not None
            rgb = video_frame_to_rgb(frame, *self.size)
            self._cache = (frame, rgb)  # the frame itself, so its id cannot be reused
            return rgb

    def release(self) -> None:
        self.camera.frames.clear()
        self._cache = None
