"""A light aiortc peer for churn, fault and limit tests: a small moving picture and a tone,
sent in real time, with the output counted as it arrives. It ends its session the way a user
might: a goodbye (DELETE), closing the connection without one, or vanishing (a network cut)."""

from __future__ import annotations

import asyncio
import fractions
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack

from benchmarks.netshim import UdpRelay

log = logging.getLogger(__name__)

Ending = Literal["delete", "close", "vanish"]


class PatternVideo(VideoStreamTrack):
    """A small picture whose content changes every frame (so the encoder has work to do)."""

    def __init__(self, width: int = 160, height: int = 120) -> None:
        super().__init__()
        ramp = np.linspace(0, 255, width, dtype=np.float32)
        self._base = np.broadcast_to(ramp, (height, width)).astype(np.uint8)
        self._count = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        self._count += 1
        grey = np.roll(self._base, self._count * 4, axis=1)
        frame = av.VideoFrame.from_ndarray(np.stack([grey] * 3, axis=-1), format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


class ToneAudio(AudioStreamTrack):
    """A 220 Hz tone switched on and off twice a second, 20 ms frames in real time."""

    async def recv(self) -> av.AudioFrame:
        frame = await super().recv()  # paced silence
        start = frame.pts
        t = (start + np.arange(frame.samples)) / frame.sample_rate
        on = (np.floor(t * 4) % 2 == 0).astype(np.float32)
        samples = (np.sin(2 * math.pi * 220 * t) * 8000 * on).astype(np.int16)
        tone = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        tone.sample_rate, tone.pts, tone.time_base = frame.sample_rate, start, fractions.Fraction(1, frame.sample_rate)
        return tone


@dataclass
class PeerRun:
    status: int = 0
    answer: dict[str, Any] = field(default_factory=dict)
    video_arrivals: list[float] = field(default_factory=list)
    audio_frames: int = 0

    @property
    def session_id(self) -> str:
        return str(self.answer.get("session_id", ""))

    def fps(self, since: float | None = None) -> float:
        arrivals = [a for a in self.video_arrivals if since is None or a >= since]
        if len(arrivals) < 2:
            return 0.0
        return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])


async def run_peer(
    base_url: str,
    seconds: float,
    options: dict[str, Any] | None = None,
    ending: Ending = "delete",
    relay: UdpRelay | None = None,
    headers: dict[str, str] | None = None,
    size: tuple[int, int] = (160, 120),
    run: PeerRun | None = None,
    camera: bool = True,
) -> PeerRun:
    """Stream for ``seconds`` and end as ``ending`` says; a refused offer returns its status.
    Without ``camera`` the peer only receives video (a portrait avatar needs no camera)."""
    run = run or PeerRun()
    pc = RTCPeerConnection()
    pc.addTrack(ToneAudio())
    if camera:
        pc.addTrack(PatternVideo(*size))
    else:
        pc.addTransceiver("video", direction="recvonly")
    tasks: list[asyncio.Task[None]] = []

    async def record(track: MediaStreamTrack) -> None:
        try:
            while True:
                await track.recv()
                if track.kind == "video":
                    run.video_arrivals.append(time.monotonic())
                else:
                    run.audio_frames += 1
        except MediaStreamError:
            pass

    @pc.on("connectionstatechange")
    def on_state() -> None:
        log.info("peer connection %s", pc.connectionState)

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        tasks.append(asyncio.create_task(record(track)))

    try:
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        if relay is not None:
            sdp = await relay.offer(sdp)
        body = {"sdp": sdp, "type": "offer", "options": options or {}}
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.post(f"{base_url}/offer", json=body) as response:
                run.status = response.status
                run.answer = await response.json()
            if run.status != 200:
                return run
            answer = run.answer["sdp"]
            if relay is not None:
                answer = relay.answer(answer)
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            await asyncio.sleep(seconds)
            if ending == "vanish":
                assert relay is not None, "vanishing needs a relay to cut"
                relay.faults.cut = True
            elif ending == "delete":
                async with http.delete(f"{base_url}/sessions/{run.session_id}") as response:
                    assert response.status in (200, 404), await response.text()
    finally:
        await pc.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return run
