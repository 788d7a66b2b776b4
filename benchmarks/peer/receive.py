"""What the peer records of the server's output, and the measures taken on it: frames per second and
the A/V offset at the receiver (returned frames are read by their stamps, returned audio is matched
to the clip's audio by cross-correlation, both placed on the sender's clock by the RTCP sender
reports).
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtcpSrPacket

from benchmarks.peer.stamps import read_stamp
from engines.media_io import load_audio


class SenderTime:
    """Maps a received frame's RTP timestamp to the sender's wall clock, from the RTCP sender
    reports, as a browser does to play audio and video in sync (RFC 3550, section 6.4.1)."""

    def __init__(self, receiver: Any, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        self.reports: list[tuple[float, int]] = []  # (sender NTP seconds, RTP timestamp)
        self.report_arrivals: list[float] = []  # when each report arrived (monotonic)
        self.first_rtp: int | None = None
        handle_rtcp, handle_rtp = receiver._handle_rtcp_packet, receiver._handle_rtp_packet

        async def on_rtcp(packet: Any) -> None:
            if isinstance(packet, RtcpSrPacket):
                info = packet.sender_info
                self.reports.append((info.ntp_timestamp / (1 << 32), info.rtp_timestamp))
                self.report_arrivals.append(time.monotonic())
            await handle_rtcp(packet)

        async def on_rtp(packet: Any, arrival_time_ms: int) -> None:
            if self.first_rtp is None:
                self.first_rtp = packet.timestamp  # aiortc's decoded pts count from here
            await handle_rtp(packet, arrival_time_ms=arrival_time_ms)

        receiver._handle_rtcp_packet, receiver._handle_rtp_packet = on_rtcp, on_rtp

    def __call__(self, pts: int, arrival: float | None = None) -> float:
        """Sender time (s) of the frame with decoded pts ``pts``, by the last sender report that
        had arrived by ``arrival`` (the first one if none had; the very last if not given): a
        report sent while the stream stalls maps later times to the stalled timestamp."""
        assert self.first_rtp is not None and self.reports, "no sender report received"
        index = len(self.reports) - 1
        if arrival is not None:
            index = max(0, bisect.bisect_right(self.report_arrivals, arrival) - 1)
        ntp, rtp = self.reports[index]
        rtp_of_frame = (self.first_rtp + pts) % (1 << 32)
        ticks = (rtp_of_frame - rtp + (1 << 31)) % (1 << 32) - (1 << 31)
        return ntp + ticks / self.clock_rate


@dataclass
class Received:
    video: list[tuple[float, int, np.ndarray]] = field(default_factory=list)  # (arrival, pts, rgb)
    audio: list[tuple[float, int, np.ndarray]] = field(default_factory=list)  # (arrival, pts, mono48k)
    answer: dict[str, Any] = field(default_factory=dict)
    sender_time: dict[str, SenderTime] = field(default_factory=dict)  # by kind
    keep_rows: int | None = None  # keep only the top rows of each video frame (long runs: the stamps)
    video_handed: list[float] = field(default_factory=list)  # when the peer encoded frame n
    audio_handed: list[float] = field(default_factory=list)  # when the peer encoded 20 ms frame n


async def record(track: MediaStreamTrack, received: Received) -> None:
    """Append each decoded frame of ``track`` to ``received`` with its arrival time."""
    try:
        while True:
            frame = await track.recv()
            arrival = time.monotonic()
            if track.kind == "video":
                rgb = frame.to_ndarray(format="rgb24")
                if received.keep_rows is not None:
                    rgb = np.ascontiguousarray(rgb[: received.keep_rows])
                received.video.append((arrival, frame.pts, rgb))
            else:
                samples = frame.to_ndarray().reshape(-1, len(frame.layout.channels)).mean(axis=1)
                received.audio.append((arrival, frame.pts, samples.astype(np.float32) / 32768.0))
    except MediaStreamError:
        pass


def output_fps(received: Received, skip_s: float = 1.0) -> float:
    """Frames per second received, after the first ``skip_s`` seconds of start-up."""
    arrivals = [arrival for arrival, _, _ in received.video]
    start = arrivals[0] + skip_s
    steady = [a for a in arrivals if a >= start]
    return (len(steady) - 1) / (steady[-1] - steady[0])


def audio_origin(audio: np.ndarray, first_pts: int, source: np.ndarray, received: Received, clip_fps: float) -> int:
    """The audio pts at which the clip's source time 0 would lie in the received stream.

    Found by cross-correlating 1.5 s of the clip's audio, taken from 0.5 s after the source time of
    the first stamped frame received, with the first 4 s received: a looped clip repeats its
    audio, so a receiver that joined mid-stream (an SFU's late viewer) must look for what it
    joined at, not for the clip's start, or it would lock onto a repetition a loop away."""
    stamps = [read_stamp(rgb) for _, _, rgb in received.video[:50]]
    start_s = next((index / clip_fps for index in stamps if index > 0), 0.0)
    at = int(round((start_s + 0.5) * 48000))
    if at + 48000 * 3 // 2 > len(source):
        start_s, at = 0.0, 48000 // 2
    probe = source[at : at + 48000 * 3 // 2]
    corr = np.correlate(audio[: 48000 * 4 + len(probe)], probe, mode="valid")
    return int(np.argmax(np.abs(corr))) - at + first_pts


def av_offsets(received: Received, clip: Path, clip_fps: float) -> np.ndarray:
    """A/V offset at the receiver (s), per received frame: when the frame showing source
    instant s is to be presented minus when the audio of s is, both placed on the sender's clock
    by the RTCP sender reports (a receiver synchronising playout adds the same delay to both)."""
    return av_offsets_timed(received, clip, clip_fps)[:, 1]


def av_offsets_timed(received: Received, clip: Path, clip_fps: float) -> np.ndarray:
    """Like :func:`av_offsets`, as rows of (arrival time of the frame, offset).

    Received audio is placed by its pts (RTP time), not by counting samples, so lost or
    late-dropped audio packets leave gaps instead of shifting everything after them."""
    first_pts = received.audio[0][1]
    end = max(pts + len(samples) for _, pts, samples in received.audio) - first_pts
    audio = np.zeros(end, np.float32)
    for _, pts, samples in received.audio:
        audio[pts - first_pts : pts - first_pts + len(samples)] = samples
    audio_pts = [pts for _, pts, _ in received.audio]
    origin = audio_origin(audio, first_pts, load_audio(clip, 48000), received, clip_fps)
    video_time, audio_time = received.sender_time["video"], received.sender_time["audio"]
    offsets = []
    for arrival, pts, rgb in received.video:
        index = read_stamp(rgb)
        sample_pts = origin + round(index / clip_fps * 48000)
        chunk = bisect.bisect_right(audio_pts, sample_pts) - 1
        if index > 0 and chunk >= 0 and sample_pts < first_pts + end:
            audio_arrival = received.audio[chunk][0]
            offsets.append((arrival, video_time(pts, arrival) - audio_time(sample_pts, audio_arrival)))
    return np.asarray(offsets, dtype=np.float64).reshape(-1, 2)
