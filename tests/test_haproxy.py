"""Two servers behind HAProxy (Debian's ``haproxy``), run with the configuration the README
quotes (``deploy/haproxy.cfg``, only its ports changed), everything through the balancer: new
sessions spread over the servers, the third one is refused with the server's own message, each
session's stats WebSocket and its DELETE reach the server that owns it, and a channel's WHIP
producer and WHEP viewer meet on one server."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from pydantic import ValidationError

from benchmarks.live import stop_server
from benchmarks.peer import Received, whep_play, whip_publish
from benchmarks.synthetic_peer import PatternVideo, PeerRun, ToneAudio, run_peer
from stream_server.config import Settings
from stream_server.ids import new_id
from tests.conftest import offer_sdp

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "deploy" / "haproxy.cfg"
INSTALL_HINT = "HAProxy is needed for this test: apt-get install haproxy (CI's .ci/run installs it)"
START_S = 30.0
SMALL = (96, 96)  # the cameras' size: keeps the two machines' cores for the rest


def test_an_instance_name_starts_every_id_and_cannot_hold_a_dash() -> None:
    assert new_id("s1").startswith("s1-") and len(new_id("s1")) == 15 and "-" not in new_id()
    assert Settings(instance="edge_2").instance == "edge_2" and Settings().instance == ""
    for bad in ("s-1", "s 1", "s1/", "x" * 33):
        with pytest.raises(ValidationError, match="letters, digits and _"):
            Settings(instance=bad)


def test_the_readme_quotes_the_tested_configuration() -> None:
    assert CONFIG.read_text() in (ROOT / "README.md").read_text(), "README's Scaling out must quote deploy/haproxy.cfg as it is"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def haproxy_config(front: int, servers: dict[str, int]) -> str:
    """``deploy/haproxy.cfg`` with its ports changed: the front's 8080, and 8081, 8082... for
    the servers named s1, s2... (the file's own names)."""
    text = CONFIG.read_text()
    replaced = {"127.0.0.1:8080": f"127.0.0.1:{front}"}
    for number, (name, port) in enumerate(servers.items(), start=1):
        assert f"server {name} 127.0.0.1:{8080 + number}" in text, f"{CONFIG} has no server {name} on port {8080 + number}"
        replaced[f"127.0.0.1:{8080 + number}"] = f"127.0.0.1:{port}"
    for old, new in replaced.items():
        assert old in text, f"{CONFIG} no longer has {old}"
        text = text.replace(old, new)
    return text


def wait_until_listening(proc: subprocess.Popen[bytes], port: int, log: Path, within_s: float = START_S) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{proc.args} did not listen on {port} within {within_s} s:\n{log.read_text()}")


class Cluster:
    """HAProxy on ``url`` in front of servers s1 and s2, each with at most one session."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.front = free_port()
        self.ports = {"s1": free_port(), "s2": free_port()}
        self.url = f"http://127.0.0.1:{self.front}"
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def _start(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append((proc, log))
        return proc

    def start(self) -> None:
        haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
        assert haproxy is not None, INSTALL_HINT
        servers = {
            name: self._start(name, [sys.executable, "-m", "stream_server", "--log-level", "WARNING", "serve",
                                     "--port", str(port), "--instance", name, "--max-sessions", "1",
                                     "--backend", "passthrough", "--idle-timeout", "5"])
            for name, port in self.ports.items()
        }
        for name, proc in servers.items():
            wait_until_listening(proc, self.ports[name], self.tmp / f"{name}.log")
        config = self.tmp / "haproxy.cfg"
        config.write_text(haproxy_config(self.front, self.ports))
        wait_until_listening(self._start("haproxy", [haproxy, "-f", str(config), "-db"]), self.front, self.tmp / "haproxy.log", 10)

    async def logged(self, text: str, within_s: float = 10.0) -> None:
        """Wait until HAProxy's log has ``text`` (what its health checks concluded, say)."""
        log, deadline = self.tmp / "haproxy.log", time.monotonic() + within_s
        while text not in log.read_text():
            assert time.monotonic() < deadline, f"HAProxy did not log {text!r} within {within_s} s:\n{log.read_text()}"
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        for proc, log in self.procs:
            stop_server(proc)
            print(f"--- {log.name}\n{log.read_text()}")


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    cluster = Cluster(tmp_path)
    try:
        await asyncio.to_thread(cluster.start)
        yield cluster
    finally:
        await asyncio.to_thread(cluster.stop)


def owner(identifier: str) -> str:
    return identifier.split("-", 1)[0]


async def stats_through(url: str, session_id: str) -> dict[str, Any]:
    """The first figures, with frames sent, that the session's stats WebSocket pushes."""
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{url}/ws/stats?session={session_id}") as socket_:
            while True:
                figures = await socket_.receive_json(timeout=5)
                if figures.get("type") == "stats" and figures["fps_out"]:
                    return figures


async def streaming(run: PeerRun, frames: int = 10, within_s: float = 15.0) -> None:
    """Wait until the offer is answered and, if it was accepted, ``frames`` frames came back."""
    deadline = time.monotonic() + within_s
    while run.status == 0 or (run.status == 200 and len(run.video_arrivals) < frames):
        assert time.monotonic() < deadline, f"status {run.status}, {len(run.video_arrivals)} frames after {within_s} s"
        await asyncio.sleep(0.05)


async def test_two_servers_behind_haproxy(cluster: Cluster) -> None:
    url = cluster.url
    first, second = PeerRun(), PeerRun()
    # sent at once: if both reach one server, its 503 sends the later one to the other server
    streams = [
        asyncio.create_task(run_peer(url, 10.0, {"backend": "passthrough", "avatar": "camera", "fps": 15}, run=first, size=SMALL)),
        asyncio.create_task(run_peer(url, 6.0, {"backend": "passthrough", "avatar": "camera", "fps": 20}, run=second, size=SMALL)),
    ]
    try:
        await streaming(first)
        await streaming(second)
        assert (first.status, second.status) == (200, 200), (first.answer, second.answer)
        assert {owner(first.session_id), owner(second.session_id)} == {"s1", "s2"}, "both sessions on one server"

        # both health checks say "full": from here new offers reach only the backup lines, and
        # follow-ups reach their owner only through force-persist
        for name in cluster.ports:
            await cluster.logged(f"Server sessions/{name} is DOWN")
        async with aiohttp.ClientSession() as http:
            # the third: both servers are full, and the client gets a server's own refusal
            body = {"sdp": await offer_sdp(), "type": "offer", "options": {"backend": "passthrough"}}
            async with http.post(f"{url}/offer", json=body) as response:
                refusal = await response.json()
                assert response.status == 503 and response.headers["Retry-After"] == "30", refusal
                assert refusal["error"].startswith("the server is full"), refusal
            async with http.get(f"{url}/") as response:  # a full cluster still serves the page, to show that
                assert response.status == 200 and "<video" in await response.text()
            for name, port in cluster.ports.items():
                async with http.get(f"http://127.0.0.1:{port}/healthz?ready=1") as response:
                    health = await response.json()
                    assert response.status == 503 and health["status"] == "full", health
                    assert (health["instance"], health["sessions"], health["free"]) == (name, 1, 0)

            # each stats socket, opened through HAProxy, shows its own session
            for run, fps in ((first, 15), (second, 20)):
                figures = await stats_through(url, run.session_id)
                assert (figures["session_id"], figures["fps_target"]) == (run.session_id, fps), figures
                assert figures["frames"]["generated"] > 0, figures

            # DELETE reaches the owner; its server then takes a new session
            async with http.delete(f"{url}/sessions/{first.session_id}") as response:
                assert response.status == 200 and (await response.json()) == {"closed": first.session_id}
        again = await run_peer(url, 1.5, {"backend": "passthrough", "avatar": "camera"}, size=SMALL)
        assert again.status == 200, again.answer
        assert owner(again.session_id) == owner(first.session_id)
        assert again.video_arrivals, "the new session received no frames"
        streams[0].cancel()  # its session ended with the DELETE
        await streams[1]
    finally:
        for task in streams:
            task.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
    assert len(second.video_arrivals) > 60, f"{second.session_id} received {len(second.video_arrivals)} frames in 6 s"
    await channel_on_one_server(url)


async def channel_on_one_server(url: str) -> None:
    """A channel created, published (WHIP) and watched (WHEP) through HAProxy, all on one server;
    each resource's DELETE reaches it too."""
    async with aiohttp.ClientSession() as http:
        create = {"name": "studio", "options": {"backend": "passthrough", "avatar": "camera", "width": 96, "height": 96}}
        async with http.post(f"{url}/channels", json=create) as response:
            assert response.status == 201, await response.text()
    producer, producer_url = await whip_publish(url, "studio", [ToneAudio(), PatternVideo(*SMALL)])
    received = Received()
    viewer, viewer_url, tasks = await whep_play(url, "studio", received)
    try:
        deadline = time.monotonic() + 15
        while len(received.video) < 10:
            assert time.monotonic() < deadline, f"the viewer received {len(received.video)} frames"
            await asyncio.sleep(0.1)
        assert owner(producer_url.rsplit("/", 1)[1]) == owner(viewer_url.rsplit("/", 1)[1])
        async with aiohttp.ClientSession() as http:
            for resource in (viewer_url, producer_url):
                async with http.delete(resource) as response:
                    assert response.status == 200, (resource, await response.text())
    finally:
        for task in tasks:
            task.cancel()
        await viewer.close()
        await producer.close()
