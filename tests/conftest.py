"""Shared fixtures: a real server on a loopback port, in the test's event loop."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiortc import RTCPeerConnection
from threadpoolctl import threadpool_limits

from engines import registry
from stream_server.app import create_app
from stream_server.hub import SERVER, Server
from stream_server.config import Settings

threadpool_limits(1, user_api="blas")  # as the server runs (stream_server/cli.py)

TEST_BACKENDS = {
    "slow": "tests.backends:SlowBackend",
    "batching": "tests.backends:BatchingBackend",
    "broken": "tests.backends:BrokenBackend",
    "faulty": "tests.backends:FaultAfterBackend",
    "badload": "tests.backends:FailingLoadBackend",
}


@dataclass
class Live:
    url: str
    server: Server


StartServer = Callable[..., Awaitable[Live]]


@pytest.fixture
async def start_server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[StartServer]:
    """Starts the real app on a free loopback port with the given settings; the test backends
    are registered too. Every server started is shut down after the test."""
    monkeypatch.setattr(registry, "BACKENDS", {**registry.BACKENDS, **TEST_BACKENDS})
    runners: list[web.AppRunner] = []

    async def start(**settings: Any) -> Live:
        app = create_app(Settings(port=0, **settings))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return Live(f"http://127.0.0.1:{runner.addresses[0][1]}", app[SERVER])

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()


@pytest.fixture
async def live(start_server: StartServer) -> Live:
    """The real app on a free loopback port, default settings; the test backends are registered too."""
    return await start_server()


@pytest.fixture
async def server_url(live: Live) -> str:
    return live.url


async def offer_sdp(video: bool = True, audio: bool = True) -> str:
    """A real aiortc offer with the sections asked for (sendrecv), for requests built by hand."""
    pc = RTCPeerConnection()
    if audio:
        pc.addTransceiver("audio", direction="sendrecv")
    if video:
        pc.addTransceiver("video", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


@pytest.fixture
def steady_gc():
    """For tests that time a live stream in this process: collect first, then freeze what exists,
    so that the collector's pauses during the test scan only what the test makes. Late in the
    suite this process holds every earlier test's objects, and one full collection stalled the
    event loop 407 ms mid-stream (a loopback test then measured 21.5 fps)."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()

