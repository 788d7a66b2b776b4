"""Shared fixtures: a real server on a loopback port, in the test's event loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator

import pytest
from aiohttp import web

from engines import registry
from stream_server.app import SERVER, Server, create_app
from stream_server.config import Settings

TEST_BACKENDS = {
    "slow": "tests.backends:SlowBackend",
    "batching": "tests.backends:BatchingBackend",
    "broken": "tests.backends:BrokenBackend",
}


@dataclass
class Live:
    url: str
    server: Server


@pytest.fixture
async def live(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Live]:
    """The real app on a free loopback port; the test backends are registered too."""
    monkeypatch.setattr(registry, "BACKENDS", {**registry.BACKENDS, **TEST_BACKENDS})
    app = create_app(Settings(port=0))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield Live(f"http://127.0.0.1:{runner.addresses[0][1]}", app[SERVER])
    finally:
        await runner.cleanup()


@pytest.fixture
async def server_url(live: Live) -> str:
    return live.url
