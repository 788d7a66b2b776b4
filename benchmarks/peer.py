"""A Python aiortc peer (tests and benchmarks) that sends a real clip to the server and records what comes back.

The clip's video frames are stamped with their index as a row of black and white blocks, so
the receiver knows which source instant each returned frame shows; returned audio is matched
to the clip's audio by cross-correlation. Together they give the A/V offset at the receiver.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urljoin

import aiohttp
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtcpSrPacket

from engines.media_io import load_audio

CODE_BITS = 14  # frame numbers up to 16383: 10.9 min at 25 fps
BLOCK = 16  # marker block side in pixels (14 blocks fit a 224-pixel frame)


def stamp(rgb: np.ndarray, index: int) -> np.ndarray:
    """Write ``index`` as CODE_BITS blocks along the top of the frame (white = 1)."""
    out = rgb.copy()
    for bit in range(CODE_BITS):
        value = 255 if (index >> bit) & 1 else 0
        out[0:BLOCK, bit * BLOCK : (bit + 1) * BLOCK] = value
    return out


def read_stamp(rgb: np.ndarray) -> int:
    """The frame index stamped on ``rgb``, or -1 if a block is neither black nor white (a blend
    of two stamped frames, as an interpolated frame is)."""
    index = 0
    for bit in range(CODE_BITS):
        level = rgb[4 : BLOCK - 4, bit * BLOCK + 4 : (bit + 1) * BLOCK - 4].mean()
        if 64 < level < 192:
            return -1
        if level > 128:
            index |= 1 << bit
    return index


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
    base_url: str, clip: Path, seconds: float, options: dict[str, Any],
    on_answer: Callable[[dict[str, Any]], None] | None = None, keep_rows: int | None = None,
    relay: Any = None,
) -> Received:
    """Send ``clip`` (camera + microphone) for ``seconds`` and record the server's output
    (of each video frame only the top ``keep_rows`` rows, if given). With ``relay`` (a
    benchmarks.netshim.UdpRelay) every packet goes through it."""
    player = MediaPlayer(str(clip))
    pc = RTCPeerConnection()
    received = Received(keep_rows=keep_rows)
    audio = PacedAudio(player.audio)
    audio.handed = received.audio_handed
    pc.addTrack(audio)
    video = StampedVideo(player.video)
    video.handed = received.video_handed
    pc.addTrack(video)
    tasks: list[asyncio.Task[None]] = []

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        tasks.append(asyncio.create_task(_record(track, received)))

    await _run_session(pc, base_url, seconds, options, received, on_answer, relay)
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
    audio_pts = [pts for _, pts, _ in received.audio]
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
        chunk = bisect.bisect_right(audio_pts, sample_pts) - 1
        if index > 0 and chunk >= 0 and sample_pts < first_pts + end:
            audio_arrival = received.audio[chunk][0]
            offsets.append((arrival, video_time(pts, arrival) - audio_time(sample_pts, audio_arrival)))
    return np.asarray(offsets, dtype=np.float64).reshape(-1, 2)


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


async def stream_microphone(
    base_url: str, mic: ArrayMicrophone, seconds: float, options: dict[str, Any],
    on_answer: Callable[[dict[str, Any]], None] | None = None,
) -> Received:
    """Send ``mic`` with a receive-only video section (the avatar comes back on it) for
    ``seconds`` and record the server's output, as a microphone-only client does."""
    pc = RTCPeerConnection()
    received = Received()
    pc.addTrack(mic)
    pc.addTransceiver("video", direction="recvonly")
    tasks: list[asyncio.Task[None]] = []

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        tasks.append(asyncio.create_task(_record(track, received)))

    await _run_session(pc, base_url, seconds, options, received, on_answer)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return received


async def _record(track: MediaStreamTrack, received: Received) -> None:
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


async def _run_session(
    pc: RTCPeerConnection, base_url: str, seconds: float, options: dict[str, Any], received: Received,
    on_answer: Callable[[dict[str, Any]], None] | None, relay: Any = None,
) -> None:
    """Offer, answer, stream for ``seconds``, end the session and close the peer (through
    ``relay``, a benchmarks.netshim.UdpRelay, if given)."""
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


async def whip_publish(
    base_url: str, channel: str, tracks: list[MediaStreamTrack], token: str | None = None
) -> tuple[RTCPeerConnection, str]:
    """Publish ``tracks`` to a channel over WHIP (as OBS does): returns the peer and the
    resource URL to DELETE when done."""
    pc = RTCPeerConnection()
    for track in tracks:
        pc.addTransceiver(track, direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, await _post_sdp_offer(pc, f"{base_url}/whip/{channel}", token)


async def whep_play(base_url: str, channel: str, received: Received, token: str | None = None) -> tuple[RTCPeerConnection, str, list[asyncio.Task[None]]]:
    """Play a channel over WHEP into ``received``: returns the peer, the resource URL to DELETE,
    and the recording tasks (cancel them when done)."""
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    tasks: list[asyncio.Task[None]] = []
    pc.on("track", lambda track: tasks.append(asyncio.create_task(_record(track, received))))
    await pc.setLocalDescription(await pc.createOffer())
    for transceiver in pc.getTransceivers():
        received.sender_time[transceiver.kind] = SenderTime(transceiver.receiver, 90000 if transceiver.kind == "video" else 48000)
    return pc, await _post_sdp_offer(pc, f"{base_url}/whep/{channel}", token), tasks


async def _post_sdp_offer(pc: RTCPeerConnection, url: str, token: str | None) -> str:
    """WHIP / WHEP signalling: POST the local offer as application/sdp, apply the answer, and
    return the resource URL (closes the peer and raises AssertionError if refused)."""
    headers = {"Content-Type": "application/sdp", **({"Authorization": f"Bearer {token}"} if token else {})}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=pc.localDescription.sdp, headers=headers) as response:
            body = await response.text()
            if response.status != 201:
                await pc.close()
                raise AssertionError(f"POST {url} answered {response.status}: {body}")
            location = response.headers["Location"]
    await pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
    return urljoin(url, location)
