"""Sessions with the server's ``/offer``: send a real clip (camera + microphone) or a microphone
alone for a while and record the server's output.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Callable

import aiohttp
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer

from benchmarks.peer.receive import Received, SenderTime, record
from benchmarks.peer.tracks import ArrayMicrophone, PacedAudio, StampedVideo
from engines.media_io import load_audio


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
        tasks.append(asyncio.create_task(record(track, received)))

    await _run_session(pc, base_url, seconds, options, received, on_answer, relay)
    for track in (player.audio, player.video):
        track.stop()  # ends the player's decoding thread
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return received


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
        tasks.append(asyncio.create_task(record(track, received)))

    await _run_session(pc, base_url, seconds, options, received, on_answer)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return received


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
