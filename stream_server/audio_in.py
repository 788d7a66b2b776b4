"""Inbound audio: decoded frames from aiortc -> rings keyed by media time -> streaming log-mel.

Media time 0 is the first audio sample received. A frame's place comes from its RTP-derived pts
(unwrapped across the 32-bit boundary), never from its arrival order, so lost packets leave
silence and never shift later audio. Three rings are kept:

- 16 kHz mono float32 PCM (through PyAV's resampler) for the backends and the features,
- 48 kHz mono int16 PCM, the audio sent back out (delayed by the video path's delay),
- log-mel frames (80 bins, 10 ms hop) computed as soon as each 25 ms frame is complete.

The 16 kHz path lags the 48 kHz one by the resampler's filter delay (about 1 ms at 16 kHz);
windows ignore it.
"""

from __future__ import annotations

import bisect
import collections
import math
import time
from fractions import Fraction

import av
import numpy as np

from engines import features
from engines.base import AudioWindow
from stream_server.ring_buffer import SampleRing

PLAYBACK_RATE = 48000
FEATURE_RATE = features.SAMPLE_RATE
RTP_WRAP = 1 << 32
MAX_GAP_FILL_S = 2.0  # longer gaps restart the resampler instead of feeding it silence


def signed_ticks(later: int, earlier: int) -> int:
    """``later - earlier`` for two 32-bit RTP timestamps, across a wrap, within +-2**31."""
    return (later - earlier + (1 << 31)) % RTP_WRAP - (1 << 31)


class RtpTicks:
    """A stream's 32-bit RTP timestamps unwrapped into ticks since its first one."""

    def __init__(self) -> None:
        self._first: int | None = None
        self._last = 0  # the newest timestamp seen (mod 2**32)
        self._since_first = 0  # ... and its ticks since the first

    @property
    def started(self) -> bool:
        return self._first is not None

    def advance(self, pts: int) -> int:
        """Ticks since the first timestamp of ``pts``, the stream's newest."""
        raw = int(pts) % RTP_WRAP
        if self._first is None:
            self._first = raw
        else:
            self._since_first += signed_ticks(raw, self._last)
        self._last = raw
        return self._since_first

    def peek(self, pts: int) -> int:
        """Ticks since the first timestamp of ``pts``, taken as the one nearest the newest."""
        return self._since_first + signed_ticks(int(pts) % RTP_WRAP, self._last)


class AudioIn:
    """The session's inbound audio on its media timeline: 48 kHz for playback, 16 kHz and log-mel for the backends."""

    def __init__(self, capacity_s: float = 12.0) -> None:
        self.pcm16k = SampleRing(int(capacity_s * FEATURE_RATE), np.float32)
        self.pcm48k = SampleRing(int(capacity_s * PLAYBACK_RATE), np.int16)
        self.mel = SampleRing(int(capacity_s * 1000 / 10), np.float32, width=features.N_MELS, fill=features.SILENCE)
        self._logmel = features.LogMel()
        self._to_mono48k = av.AudioResampler(format="s16", layout="mono", rate=PLAYBACK_RATE)
        self._to_16k = av.AudioResampler(format="flt", layout="mono", rate=FEATURE_RATE)
        self._rtp = RtpTicks()
        self.clock_rate: int | None = None  # RTP ticks per second of the inbound pts
        self._next48 = 0  # next expected 48 kHz sample index
        self._next16 = 0  # next 16 kHz sample index the resampler will produce
        self._next_mel = 0
        # (end sample at 48 kHz, arrival wall time, seconds spent resampling and on features)
        self._arrivals: collections.deque[tuple[int, float, float]] = collections.deque(maxlen=int(capacity_s * 100))
        self.samples_lost = 0  # 48 kHz samples filled with silence

    def release(self) -> None:
        """Free the resamplers now (the session ended). Each is an FFmpeg filter graph with its
        own threads, which otherwise wait for the garbage collector to break the session's
        reference cycles: the churn benchmark counted 4 threads more per ended session."""
        self._to_mono48k = self._to_16k = None  # type: ignore[assignment]

    # -- writing ---------------------------------------------------------------------------
    def push(self, frame: av.AudioFrame, arrival: float) -> None:
        """Add one decoded frame that arrived at wall time ``arrival`` (seconds, monotonic)."""
        if self._to_mono48k is None:
            return  # released: the session has ended
        index = self._place(frame)
        frame.pts = None  # the resamplers count samples themselves
        mono = np.concatenate([f.to_ndarray().reshape(-1) for f in self._to_mono48k.resample(frame)])
        if index is None:
            index = self._next48
        if index < self._next48:
            # a late or duplicate packet: fill what playback still can, features keep their past
            self.pcm48k.write(index, mono)
            return
        gap = index - self._next48
        if gap:
            self.samples_lost += gap
            self._feed_16k_silence(gap) if gap <= MAX_GAP_FILL_S * PLAYBACK_RATE else self._restart_16k(index)
        self.pcm48k.write(index, mono)
        self._next48 = index + len(mono)
        self._feed_16k(mono)
        self._arrivals.append((self._next48, arrival, time.monotonic() - arrival))

    def _place(self, frame: av.AudioFrame) -> int | None:
        """48 kHz sample index of the frame's first sample, from its pts (None without pts)."""
        if frame.pts is None or frame.time_base is None:
            return None
        self.clock_rate = round(1 / Fraction(frame.time_base))
        return round(Fraction(self._rtp.advance(frame.pts)) * Fraction(frame.time_base) * PLAYBACK_RATE)

    def _feed_16k(self, mono48: np.ndarray) -> None:
        frame = av.AudioFrame.from_ndarray(mono48.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = PLAYBACK_RATE
        for out in self._to_16k.resample(frame):
            pcm = out.to_ndarray().reshape(-1)
            self.pcm16k.write(self._next16, pcm)
            self._next16 += len(pcm)
        self._update_mel()

    def _feed_16k_silence(self, samples48: int) -> None:
        # silence through the resampler keeps its filter state and the sample count exact
        chunk = PLAYBACK_RATE // 10
        for start in range(0, samples48, chunk):
            self._feed_16k(np.zeros(min(chunk, samples48 - start), np.int16))

    def _restart_16k(self, index48: int) -> None:
        self._to_16k = av.AudioResampler(format="flt", layout="mono", rate=FEATURE_RATE)
        self._next16 = index48 // 3
        self._next_mel = max(self._next_mel, math.ceil(self._next16 / features.HOP))

    def _update_mel(self) -> None:
        end = self.pcm16k.end
        first = self._next_mel * features.HOP
        if end - first < features.WIN:
            return
        count = 1 + (end - first - features.WIN) // features.HOP
        pcm = self.pcm16k.read(first, (count - 1) * features.HOP + features.WIN)
        self.mel.write(self._next_mel, self._logmel.frames(pcm))
        self._next_mel += count

    # -- reading ---------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self._rtp.started

    @property
    def horizon_s(self) -> float:
        """Media time up to which audio has arrived (0 before the first frame)."""
        return self._next48 / PLAYBACK_RATE

    def media_of_pts(self, pts: int) -> float | None:
        """Media time of the inbound pts ``pts`` (mod 2**32), taken as the one nearest to the
        newest frame; None before the first frame."""
        if not self._rtp.started or self.clock_rate is None:
            return None
        return self._rtp.peek(pts) / self.clock_rate

    def arrival_of(self, media_s: float) -> float | None:
        """Wall time at which the audio up to ``media_s`` (its last sample before that instant)
        arrived, if it has and is still known."""
        found = self.arrival_and_features_of(media_s)
        return None if found is None else found[0]

    def arrival_and_features_of(self, media_s: float) -> tuple[float, float] | None:
        """As ``arrival_of``, with the seconds from that arrival until its features were ready."""
        index = bisect.bisect_left(self._arrivals, media_s * PLAYBACK_RATE, key=lambda row: row[0])
        if index == len(self._arrivals):
            return None
        _, arrival, features_s = self._arrivals[index]
        return arrival, features_s

    def window(self, center_s: float, before_s: float, after_s: float) -> AudioWindow:
        """16 kHz PCM over [center - before, center + after) and the mel frames centred there."""
        start = round((center_s - before_s) * FEATURE_RATE)
        count = round((before_s + after_s) * FEATURE_RATE)
        frames = features.frames_centered_in(center_s - before_s, center_s + after_s)
        return AudioWindow(
            center_s=center_s,
            before_s=before_s,
            after_s=after_s,
            pcm=self.pcm16k.read(start, count),
            mel=self.mel.read(frames.start, len(frames)),
        )

    def playback(self, start48: int, count: int) -> np.ndarray:
        """48 kHz mono int16 samples for the outgoing audio track."""
        return self.pcm48k.read(start48, count)
