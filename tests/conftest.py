"""Shared fixtures: a real server on a loopback port, in the test's event loop."""

from __future__ import annotations

from typing import AsyncIterator

import pytest
from aiohttp import web

from stream_server.app import create_app
from stream_server.config import Settings


@pytest.fixture
async def server_url() -> AsyncIterator[str]:
    app = create_app(Settings(port=0))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
