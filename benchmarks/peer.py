"""A Python aiortc peer (tests and benchmarks) that sends a real clip to the server and records what comes back.

The clip's video frames are stamped with their index as a row of black and white blocks, so
the receiver knows which source instant each returned frame shows; returned audio is matched
to the clip's audio by cross-correlation. Together they give the A/V offset at the receiver.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import aiohttp
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtcpSrPacket

from stream_server.media_io import load_audio

CODE_BITS = 11  # frame numbers up to 2047: 80 s at 25 fps
BLOCK = 20  # marker block side in pixels (11 blocks fit a 224-pixel frame)


def stamp(rgb: np.ndarray, index: int) -> np.ndarray:
    """Write ``index`` as CODE_BITS blocks along the top of the frame (white = 1)."""
    out = rgb.copy()
    for bit in range(CODE_BITS):
        value = 255 if (index >> bit) & 1 else 0
        out[0:BLOCK, bit * BLOCK : (bit + 1) * BLOCK] = value
    return out


def read_stamp(rgb: np.ndarray) -> int:
    index = 0
    for bit in range(CODE_BITS):
        block = rgb[4 : BLOCK - 4, bit * BLOCK + 4 : (bit + 1) * BLOCK - 4]
        if block.mean() > 128:
            index |= 1 << bit
    return index


class StampedVideo(MediaStreamTrack):
    """The player's video with each frame's index stamped on it."""

    kind = "video"

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self._source = source
        self.sent = 0

    async def recv(self):  # type: ignore[no-untyped-def]
        import av

        frame = await self._source.recv()
        stamped = av.VideoFrame.from_ndarray(stamp(frame.to_ndarray(format="rgb24"), self.sent), format="rgb24")
        stamped.pts, stamped.time_base = frame.pts, frame.time_base
        self.sent += 1
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
        return out


class SenderTime:
    """Maps a received frame's RTP timestamp to the sender's wall clock, from the RTCP sender
    reports, as a browser does to play audio and video in sync (RFC 3550, section 6.4.1)."""

    def __init__(self, receiver: Any, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        self.reports: list[tuple[float, int]] = []  # (sender NTP seconds, RTP timestamp)
        self.first_rtp: int | None = None
        handle_rtcp, handle_rtp = receiver._handle_rtcp_packet, receiver._handle_rtp_packet

        async def on_rtcp(packet: Any) -> None:
            if isinstance(packet, RtcpSrPacket):
                info = packet.sender_info
                self.reports.append((info.ntp_timestamp / (1 << 32), info.rtp_timestamp))
            await handle_rtcp(packet)

        async def on_rtp(packet: Any, arrival_time_ms: int) -> None:
            if self.first_rtp is None:
                self.first_rtp = packet.timestamp  # aiortc's decoded pts count from here
            await handle_rtp(packet, arrival_time_ms=arrival_time_ms)

        receiver._handle_rtcp_packet, receiver._handle_rtp_packet = on_rtcp, on_rtp

    def __call__(self, pts: int) -> float:
        """Sender time (s) of the frame with decoded pts ``pts``, by the last sender report."""
        assert self.first_rtp is not None and self.reports, "no sender report received"
        ntp, rtp = self.reports[-1]
        rtp_of_frame = (self.first_rtp + pts) % (1 << 32)
        ticks = (rtp_of_frame - rtp + (1 << 31)) % (1 << 32) - (1 << 31)
        return ntp + ticks / self.clock_rate


@dataclass
class Received:
    video: list[tuple[float, int, np.ndarray]] = field(default_factory=list)  # (arrival, pts, rgb)
    audio: list[tuple[float, int, np.ndarray]] = field(default_factory=list)  # (arrival, pts, mono48k)
    answer: dict[str, Any] = field(default_factory=dict)
    sender_time: dict[str, SenderTime] = field(default_factory=dict)  # by kind


def loop_clip(clip: Path, seconds: float, out_dir: Path) -> Path:
    """The clip repeated to last ``seconds``, as one file (so the audio and video loop together)."""
    import av

    out = out_dir / f"{clip.stem}_{int(seconds)}s.mp4"
    if out.exists():
        return out
    with av.open(str(clip)) as source:
        rate = source.streams.video[0].average_rate
        frames = [f.to_ndarray(format="rgb24") for f in source.decode(video=0)]
    audio = load_audio(clip, 48000)
    audio = audio[: round(len(frames) / float(rate) * 48000)]  # one pass of audio per pass of video
    passes = int(np.ceil(seconds * float(rate) / len(frames)))
    with av.open(str(out), "w") as container:
        video = container.add_stream("libx264", rate=rate)
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = "yuv420p"
        sound = container.add_stream("aac", rate=48000)
        sound.layout = "mono"
        pcm = np.tile(audio, passes).astype(np.float32).reshape(1, -1)
        next_audio = 0
        for n, rgb in enumerate(frames * passes):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = n
            container.mux(video.encode(frame))
            # interleave: audio up to this frame's time, so a player reads both at their pace
            while next_audio < min(pcm.shape[1], (n + 1) / float(rate) * 48000):
                chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[:, next_audio : next_audio + 1024]), format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = 48000, next_audio
                container.mux(sound.encode(chunk))
                next_audio += 1024
        container.mux(video.encode(None))
        container.mux(sound.encode(None))
    return out


async def stream_clip(
    base_url: str,
    clip: Path,
    seconds: float,
    options: dict[str, Any],
    on_answer: Callable[[dict[str, Any]], None] | None = None,
    relay: Any = None,
) -> Received:
    """Send ``clip`` (camera + microphone) for ``seconds`` and record the server's output.
    With ``relay`` (a benchmarks.netshim.UdpRelay) every packet goes through it."""
    player = MediaPlayer(str(clip))
    pc = RTCPeerConnection()
    received = Received()
    pc.addTrack(PacedAudio(player.audio))
    video = StampedVideo(player.video)
    pc.addTrack(video)
    tasks: list[asyncio.Task[None]] = []

    async def record(track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                arrival = time.monotonic()
                if track.kind == "video":
                    received.video.append((arrival, frame.pts, frame.to_ndarray(format="rgb24")))
                else:
                    samples = frame.to_ndarray().reshape(-1, len(frame.layout.channels)).mean(axis=1)
                    received.audio.append((arrival, frame.pts, samples.astype(np.float32) / 32768.0))
        except MediaStreamError:
            pass

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        tasks.append(asyncio.create_task(record(track)))

    await pc.setLocalDescription(await pc.createOffer())
    for transceiver in pc.getTransceivers():
        rate = 90000 if transceiver.kind == "video" else 48000
        received.sender_time[transceiver.kind] = SenderTime(transceiver.receiver, rate)
    async with aiohttp.ClientSession() as http:
        sdp = pc.localDescription.sdp if relay is None else await relay.offer(pc.localDescription.sdp)
        body = {"sdp": sdp, "type": "offer", "options": options}
        async with http.post(f"{base_url}/offer", json=body) as response:
            received.answer = await response.json()
            assert response.status == 200, received.answer
        if on_answer:
            on_answer(received.answer)
        answer = received.answer["sdp"] if relay is None else relay.answer(received.answer["sdp"])
        await pc.setRemoteDescription(RTCSessionDescription(answer, received.answer["type"]))
        await asyncio.sleep(seconds)
        async with http.delete(f"{base_url}/sessions/{received.answer['session_id']}") as response:
            assert response.status == 200
    await pc.close()
    for track in (player.audio, player.video):
        track.stop()  # ends the player's decoding thread
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return received


def output_fps(received: Received, skip_s: float = 1.0) -> float:
    """Frames per second received, after the first ``skip_s`` seconds of start-up."""
    arrivals = [arrival for arrival, _, _ in received.video]
    start = arrivals[0] + skip_s
    steady = [a for a in arrivals if a >= start]
    return (len(steady) - 1) / (steady[-1] - steady[0])


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
    source = load_audio(clip, 48000)
    # where the clip's audio begins in the received stream (the output starts with silence)
    probe = source[48000 // 2 : 48000 * 2]  # 1.5 s of speech from 0.5 s in
    corr = np.correlate(audio[: 48000 * 6], probe, mode="valid")
    origin = int(np.argmax(np.abs(corr))) - 48000 // 2 + first_pts  # audio pts of source time 0
    video_time, audio_time = received.sender_time["video"], received.sender_time["audio"]
    offsets = []
    for arrival, pts, rgb in received.video:
        index = read_stamp(rgb)
        sample_pts = origin + round(index / clip_fps * 48000)
        if index > 0 and first_pts <= sample_pts < first_pts + end:
            offsets.append((arrival, video_time(pts) - audio_time(sample_pts)))
    return np.asarray(offsets, dtype=np.float64).reshape(-1, 2)
