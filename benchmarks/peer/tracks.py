"""The peer's outgoing test tracks: the clip's video with each frame's index stamped on it, its
audio re-cut into 20 ms frames sent in real time (as a microphone does), and a microphone playing
an array.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
from aiortc import MediaStreamTrack

from benchmarks.peer.stamps import stamp


class StampedVideo(MediaStreamTrack):
    """The player's video with each frame's index stamped on it."""

    kind = "video"

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self._source = source
        self.sent = 0
        self.handed: list[float] = []  # when frame n went to the encoder (monotonic)

    async def recv(self):  # type: ignore[no-untyped-def]
        import av

        frame = await self._source.recv()
        stamped = av.VideoFrame.from_ndarray(stamp(frame.to_ndarray(format="rgb24"), self.sent), format="rgb24")
        stamped.pts, stamped.time_base = frame.pts, frame.time_base
        self.sent += 1
        self.handed.append(time.monotonic())
        return stamped


class PacedAudio(MediaStreamTrack):
    """The player's audio re-cut into 20 ms frames sent in real time, as a microphone does
    (a file's decoder hands out bigger frames in bursts)."""

    kind = "audio"

    def __init__(self, source: MediaStreamTrack) -> None:
        import av

        super().__init__()
        self._source = source
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=48000, frame_size=960)
        self._pending: list = []
        self._sent = 0
        self._start: float | None = None
        self.handed: list[float] = []  # when 20 ms frame n went to the encoder (monotonic)

    async def recv(self):  # type: ignore[no-untyped-def]
        from fractions import Fraction

        while not self._pending:
            frame = await self._source.recv()
            frame.pts = None
            self._pending.extend(self._resampler.resample(frame))
        out = self._pending.pop(0)
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._sent * 0.02 - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        out.pts, out.time_base = self._sent * 960, Fraction(1, 48000)
        self._sent += 1
        self.handed.append(time.monotonic())
        return out


class ArrayMicrophone(MediaStreamTrack):
    """A microphone playing ``pcm`` (48 kHz mono float) in 20 ms frames in real time, then
    silence. Records when each frame was captured, so the capture instant of any sample is known."""

    kind = "audio"

    def __init__(self, pcm: np.ndarray) -> None:
        super().__init__()
        self._pcm = np.clip(pcm * 32767, -32768, 32767).astype(np.int16)
        self._sent = 0
        self._start: float | None = None
        self.captured: list[float] = []  # wall time (monotonic) at which frame n was complete

    async def recv(self):  # type: ignore[no-untyped-def]
        import av
        from fractions import Fraction

        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + (self._sent + 1) * 0.02 - time.monotonic()  # a frame is complete at its end
        if wait > 0:
            await asyncio.sleep(wait)
        chunk = self._pcm[self._sent * 960 : (self._sent + 1) * 960]
        chunk = np.pad(chunk, (0, 960 - len(chunk)))
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, self._sent * 960, Fraction(1, 48000)
        self.captured.append(time.monotonic())
        self._sent += 1
        return frame

    def capture_time(self, sample: int) -> float | None:
        """When sample ``sample`` entered the microphone: its frame's completion less the
        samples after it in that frame."""
        frame = sample // 960
        if frame >= len(self.captured):
            return None
        return self.captured[frame] - ((frame + 1) * 960 - sample) / 48000
