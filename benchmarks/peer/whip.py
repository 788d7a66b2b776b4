"""Channels over WHIP and WHEP: publish tracks to a channel (as OBS does), and play a channel into
a recording.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urljoin

import aiohttp
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

from benchmarks.peer.receive import Received, SenderTime, record


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
    pc.on("track", lambda track: tasks.append(asyncio.create_task(record(track, received))))
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
