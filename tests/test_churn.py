"""Churn on loopback: connect / stream / disconnect cycles, a third of them ending with a goodbye,
a third closing without one, a third vanishing (network cut). Afterwards threads, open files,
memory, asyncio tasks and Session objects are back to where they were after the first cycle,
the Session objects without waiting for Python's full garbage collection.

The 50-cycle run, against a server in its own process, is ``python -m benchmarks.churn``
(results in benchmarks/results/churn_passthrough.json)."""

from __future__ import annotations

import asyncio
import gc
import os
import time

from benchmarks.churn import TOLERANCE, churn, proc_probe
from stream_server.session import Session
from tests.conftest import StartServer

CYCLES = 9


def in_process_probe() -> dict[str, float]:
    # counted before any collection of ours: the server collects an ended session's cycles itself
    # (stream_server/heap.py); left to Python's rare full collection they held ~1.2 MB each
    sessions_alive = sum(type(o) is Session for o in gc.get_objects())  # type(): no weakproxy deref
    gc.collect()
    return {**proc_probe(os.getpid(), tree=False)(), "tasks": len(asyncio.all_tasks()), "sessions_alive": sessions_alive}


async def test_churn_returns_threads_files_and_memory_to_baseline(start_server: StartServer) -> None:
    live = await start_server(idle_timeout_s=1.5)
    # the default thread pool starts its threads as work comes, up to its size: fill it first, so
    # that the baseline is not taken from a pool still growing
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(loop.run_in_executor(None, time.sleep, 0.2) for _ in range(32)))
    result = await churn(live.url, CYCLES, 1.2, {"backend": "passthrough", "avatar": "camera"}, in_process_probe, 1.5, settle=lambda: asyncio.sleep(0.3))
    base, final = result["baseline"], result["final"]
    samples = result["samples"]
    print({k: result[k] for k in ("baseline", "final", "max", "freed_s_by_ending")})
    print("per cycle: threads", [s["threads"] for s in samples], "fds", [s["fds"] for s in samples], "rss", [s["rss_mb"] for s in samples])
    # the cycles streamed (on a loaded machine one may end before its first frame is back)
    assert sum(s["frames"] > 0 for s in samples) >= len(samples) - 1, [s["frames"] for s in samples]
    # every session freed: promptly after a goodbye or a close, within the idle timeout after a cut
    assert result["freed_s_by_ending"]["delete"] < 1.0 and result["freed_s_by_ending"]["close"] < 2.0
    assert result["freed_s_by_ending"]["vanish"] < 1.5 + 2.0
    assert all(s["sessions_alive"] == 0 for s in samples), [s["sessions_alive"] for s in samples]
    assert final["threads"] - base["threads"] <= TOLERANCE["threads"], result
    assert final["fds"] - base["fds"] <= TOLERANCE["fds"], result
    assert final["rss_mb"] - base["rss_mb"] <= TOLERANCE["rss_mb"], result
    assert max(s["tasks"] for s in samples) <= samples[0]["tasks"] + 2, [s["tasks"] for s in samples]
