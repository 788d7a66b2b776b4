"""Limits and teardown: the session cap (503 + Retry-After), idle and maximum session time, and
peers that leave with a goodbye, without one, or vanish (a network cut, made by a UDP relay)."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from benchmarks.netshim import UdpRelay
from benchmarks.synthetic_peer import PeerRun, run_peer
from tests.conftest import Live, StartServer

PASSTHROUGH = {"backend": "passthrough", "avatar": "camera"}


async def wait_until_closed(live: Live, session_id: str, within: float) -> float:
    """Seconds until the server forgot the session; fails after ``within``."""
    started = time.monotonic()
    while session_id in live.server.sessions:
        assert time.monotonic() - started < within, f"session {session_id} still open after {within} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_beyond_max_sessions_an_offer_gets_503_with_retry_after(start_server: StartServer) -> None:
    live = await start_server(max_sessions=1, retry_after_s=7)
    first = PeerRun()
    task = asyncio.create_task(run_peer(live.url, 3.0, PASSTHROUGH, run=first))
    while first.status == 0:
        await asyncio.sleep(0.05)
    assert first.status == 200
    refused = await run_peer(live.url, 0.1, PASSTHROUGH)
    assert refused.status == 503 and "the server is full" in refused.answer["error"] and "7 s" in refused.answer["error"]
    async with aiohttp.ClientSession() as http:
        body = {"sdp": "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", "type": "offer"}
        async with http.post(f"{live.url}/offer", json=body) as response:
            assert response.status == 503 and response.headers["Retry-After"] == "7"
        # a balancer's readiness probe sees the server full; its liveness probe still passes
        async with http.get(f"{live.url}/healthz?ready=1") as response:
            assert response.status == 503 and (await response.json())["status"] == "full"
        async with http.get(f"{live.url}/healthz") as response:
            health = await response.json()
            assert response.status == 200 and (health["status"], health["sessions"], health["free"]) == ("ok", 1, 0)
    await task
    await wait_until_closed(live, first.session_id, 5)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{live.url}/healthz?ready=1") as response:
            assert response.status == 200 and (await response.json())["free"] == 1
    again = await run_peer(live.url, 0.5, PASSTHROUGH)  # room again once it ended
    assert again.status == 200


async def test_a_peer_that_closes_without_a_goodbye_is_freed_within_seconds(live: Live) -> None:
    run = await run_peer(live.url, 1.5, PASSTHROUGH, ending="close")
    assert run.status == 200
    took = await wait_until_closed(live, run.session_id, 5)
    print(f"closed {took:.2f} s after the peer closed its connection")


async def test_a_peer_that_vanishes_is_freed_after_the_idle_timeout(start_server: StartServer) -> None:
    live = await start_server(idle_timeout_s=2.0)
    relay = UdpRelay()
    try:
        run = PeerRun()
        reasons: list[str] = []
        task = asyncio.create_task(run_peer(live.url, 2.0, PASSTHROUGH, ending="vanish", relay=relay, run=run))
        while not run.session_id:
            await asyncio.sleep(0.05)
        session = live.server.sessions[run.session_id]
        await task
        assert len(run.video_arrivals) > 20, "nothing came back through the relay"
        cut = time.monotonic()
        await wait_until_closed(live, run.session_id, 6)
        took = time.monotonic() - cut
        reasons.append(session.close_reason)
        print(f"freed {took:.2f} s after the cut: {session.close_reason}")
        assert 1.5 < took < 4.0 and "nothing heard from the peer for 2 s" in session.close_reason
        assert all(task.done() for task in session._tasks)
    finally:
        relay.close()


async def test_a_receive_only_peer_is_not_mistaken_for_an_idle_one(start_server: StartServer) -> None:
    """A peer that sends no media still sends RTCP receiver reports: its session stays."""
    from aiortc import RTCPeerConnection, RTCSessionDescription

    # aiortc sends a receiver report every 0.5-1.5 s: a timeout of 2.5 s leaves a second for a
    # busy loop (1.5 s failed once on a cold first run)
    live = await start_server(idle_timeout_s=2.5)
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    try:
        async with aiohttp.ClientSession() as http:
            body = {"sdp": pc.localDescription.sdp, "type": "offer", "options": {"backend": "passthrough", "avatar": "astronaut", "width": 128, "height": 128}}
            async with http.post(f"{live.url}/offer", json=body) as response:
                answer = await response.json()
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        await asyncio.sleep(5.5)  # over two timeouts
        assert answer["session_id"] in live.server.sessions
    finally:
        await pc.close()
    await wait_until_closed(live, answer["session_id"], 5)


async def test_a_session_ends_at_its_maximum_duration(start_server: StartServer) -> None:
    live = await start_server(max_session_s=1.5)
    run = PeerRun()
    task = asyncio.create_task(run_peer(live.url, 4.0, PASSTHROUGH, run=run))
    while not run.session_id:
        await asyncio.sleep(0.05)
    session = live.server.sessions[run.session_id]
    took = await wait_until_closed(live, run.session_id, 4)
    assert took < 3.0 and "maximum duration (1.5 s)" in session.close_reason
    await task
