"""A CPU backend in worker processes: the same frames as in the server's process, sessions spread
over the children, and a child that dies or hangs is replaced while its sessions fall back."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.synthetic_peer import PeerRun, run_peer
from engines.base import AudioWindow, FrameJob
from engines.images import fit_cover, read_image
from engines.mesh.backend import MeshBackend
from stream_server.avatars import BUNDLED
from stream_server.process_pool import ProcessWorkers
from tests.conftest import Live, StartServer
from tests.test_faults import session_of

STREAM_S = 6.0


def _jobs(backend: MeshBackend, avatar, image: np.ndarray, stream: str, count: int) -> list[FrameJob]:
    frames = int(round((backend.context_s + backend.lookahead_s) * 100))
    rng = np.random.default_rng(7)
    return [FrameJob(stream, k, k / 25, AudioWindow(k / 25, backend.context_s, backend.lookahead_s,
                                                     np.zeros(frames * 160, np.float32),
                                                     rng.normal(-4.0, 2.0, (frames, 80)).astype(np.float32)),
                     image, avatar) for k in range(count)]


def test_worker_processes_draw_the_frames_the_server_would_and_clean_up() -> None:
    local = MeshBackend()
    local.load()
    image = fit_cover(read_image(BUNDLED["astronaut"]), 256, 256)
    avatar = local.prepare_avatar("astronaut", image)
    pool = ProcessWorkers(local, 2)
    try:
        remote = pool.members[1].backend
        assert remote.pid != os.getpid() and remote.alive()
        jobs = _jobs(local, avatar, image, "a", 4)
        far = remote.generate(jobs)
        here = MeshBackend()
        here.load()
        near = here.generate(jobs)
        assert all(np.array_equal(a, b) for a, b in zip(far, near))  # bit for bit
        assert remote.stream_stats("a") == here.stream_stats("a")
        blocks = [Path("/dev/shm") / arena.block.name.lstrip("/") for arena in (remote._inbound, remote._outbound)]
        assert all(block.exists() for block in blocks)
    finally:
        pool.stop()
    assert [m.backend.process.exitcode for m in pool.members] == [0, 0]
    assert not any(block.exists() for block in blocks)  # the shared memory went with them


async def _two_sessions(live: Live) -> tuple[PeerRun, PeerRun, asyncio.Future, object, object]:
    runs = PeerRun(), PeerRun()
    options = {"backend": "mesh", "avatar": "astronaut", "width": 256, "height": 256}
    streaming = asyncio.gather(*(run_peer(live.url, STREAM_S, options, run=run, size=(96, 96)) for run in runs))
    first, second = await session_of(live, runs[0]), await session_of(live, runs[1])
    return runs[0], runs[1], streaming, first, second


def _child(session) -> object:
    return session.pipeline.generation.worker.backend


@pytest.mark.parametrize(("fault", "why"), [("kill", "died"), ("stop", "did not return within 1.5 s")])
async def test_a_child_that_dies_or_hangs_is_replaced_and_only_its_session_falls_back(
        start_server: StartServer, fault: str, why: str) -> None:
    live = await start_server(workers=2, fallback_backends=["passthrough"], hang_timeout_s=1.5)
    hit, spared, streaming, hit_session, spared_session = await _two_sessions(live)
    child, other = _child(hit_session), _child(spared_session)
    assert child.pid != other.pid  # one session per worker process
    await asyncio.sleep(1.5)
    generated = spared_session.pipeline.scheduler.counts.generated
    os.kill(child.pid, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
    try:
        await asyncio.wait_for(streaming, STREAM_S + 20)
        assert hit_session.fallbacks and hit_session.fallbacks[0]["to"] == "passthrough"
        assert why in hit_session.fallbacks[0]["reason"], hit_session.fallbacks
        assert not spared_session.fallbacks and spared_session.pipeline.scheduler.counts.generated > generated + 50
        assert hit.fps(since=hit.video_arrivals[0] + 3.0) > 15  # it streamed on, on the fallback
    finally:
        if fault == "stop" and child.alive():
            os.kill(child.pid, signal.SIGCONT)
    workers = live.server._workers["mesh"]
    deadline = time.monotonic() + 30
    while workers._down and time.monotonic() < deadline:  # the restart loads a backend: seconds
        await asyncio.sleep(0.2)
    pids = [m.backend.pid for m in workers.members]
    assert len(pids) == 2 and child.pid not in pids and all(m.backend.alive() for m in workers.members)
    again = PeerRun()
    streaming = asyncio.ensure_future(run_peer(live.url, 2.5, {"backend": "mesh", "avatar": "astronaut", "width": 256,
                                                               "height": 256}, run=again, size=(96, 96)))
    session = await session_of(live, again)
    await streaming
    assert again.status == 200 and len(again.video_arrivals) > 25
    assert not session.fallbacks and session.pipeline.scheduler.counts.generated > 20  # mesh serves again
