"""Shared by the live benchmarks: the server in its own process, its pushed stats, percentiles."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from typing import Any, Sequence

import aiohttp
import numpy as np

from benchmarks.results_io import ROOT


def pct(values: Sequence[float] | np.ndarray, q: float) -> float:
    """The q-th percentile of ``values`` (seconds) in milliseconds, to 0.1 ms."""
    return round(float(np.percentile(np.asarray(values) * 1000.0, q)), 1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(port: int, extra: Sequence[str] = (), module: str = "stream_server") -> subprocess.Popen[bytes]:
    """The server in its own process, as users run it (``module`` may wrap it with test backends)."""
    server = subprocess.Popen(
        [sys.executable, "-m", module, "--log-level", "WARNING", "serve", "--port", str(port), *extra],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    return wait_listening(server, port)


def wait_listening(server: subprocess.Popen[bytes], port: int) -> subprocess.Popen[bytes]:
    """Wait (up to 30 s) until ``server`` accepts connections on ``port``; stop it if it never does."""
    for _ in range(300):
        if server.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit(f"the server did not start: {server.stderr.read().decode() if server.stderr else ''}")


def stop_server(server: subprocess.Popen[bytes]) -> None:
    """Ask the process to end (SIGTERM), then kill it if it has not within 10 s."""
    if server.poll() is not None:
        return
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=5)


async def watch_stats(url: str, session_id: asyncio.Future[str], snapshots: list[dict[str, Any]]) -> None:
    """Record the stats the server pushes to the page for one session."""
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{url}/ws/stats?session={await session_id}") as socket_:
            async for message in socket_:
                data = message.json()
                if data.get("type") == "stats":
                    snapshots.append(data)
