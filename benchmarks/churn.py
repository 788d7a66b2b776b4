"""Churn: many connect / stream / disconnect cycles, some ending without a goodbye; the server's
threads, open files and memory must come back to where they were.

Endings rotate: ``delete`` (the page's Stop: DELETE, then close), ``close`` (the tab closes: the
connection closes, no DELETE), ``vanish`` (the network is cut: nothing more arrives, found by the
idle timeout). The server runs in its own process; its /proc entry is read after a warm-up
cycle (the baseline) and after every cycle.

    python -m benchmarks.churn [--cycles 50] [--seconds 1.5] [--backend passthrough]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp

from benchmarks.live import free_port, wait_listening
from benchmarks.netshim import UdpRelay
from benchmarks.proc_usage import process_tree
from benchmarks.results_io import ROOT, save
from benchmarks.synthetic_peer import Ending, run_peer

ENDINGS: tuple[Ending, ...] = ("delete", "close", "vanish")
Probe = Callable[[], dict[str, float]]


def proc_probe(pid: int, tree: bool = True) -> Probe:
    """Threads, open file descriptors and resident memory of process ``pid`` and, with ``tree``,
    the processes below it (a server's worker processes)."""

    def one(member: int) -> dict[str, float]:
        status = Path(f"/proc/{member}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return {
            "threads": int(fields["Threads"].strip()),
            "fds": len(os.listdir(f"/proc/{member}/fd")),
            "rss_mb": int(fields["VmRSS"].split()[0]) / 1024.0,
        }

    def probe() -> dict[str, float]:
        total = {"threads": 0, "fds": 0, "rss_mb": 0.0, "processes": 0}
        for member in process_tree(pid) if tree else [pid]:
            try:
                for key, value in one(member).items():
                    total[key] += value
                total["processes"] += 1
            except OSError:  # it ended meanwhile
                continue
        total["rss_mb"] = round(total["rss_mb"], 1)
        return total

    return probe


async def wait_sessions(url: str, count: int, timeout: float) -> float:
    """Wait until the server reports ``count`` sessions; returns the seconds it took."""
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(f"{url}/healthz") as response:
                if (await response.json())["sessions"] == count:
                    return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError(f"the server still has sessions {timeout} s after the peer left")
            await asyncio.sleep(0.1)


async def churn(
    url: str,
    cycles: int,
    seconds: float,
    options: dict[str, Any],
    probe: Probe,
    idle_timeout_s: float,
    settle: Callable[[], Awaitable[None]] | None = None,
    warmup: int = 1,
) -> dict[str, Any]:
    """Run the cycles after ``warmup`` more (backend load, thread pools, each worker process's
    first session); the last of those sets the baseline. Returns the baseline, every sample and the
    time each session took to go."""
    samples: list[dict[str, Any]] = []
    baseline: dict[str, float] = {}
    for cycle in range(1 - warmup, cycles + 1):
        ending = ENDINGS[cycle % len(ENDINGS)]
        relay = UdpRelay() if ending == "vanish" else None
        try:
            run = await run_peer(url, seconds, options, ending=ending, relay=relay)
            assert run.status == 200, run.answer
            freed_s = await wait_sessions(url, 0, idle_timeout_s + 5.0)
        finally:
            if relay is not None:
                relay.close()
        if settle is not None:
            await settle()
        sample = {"cycle": cycle, "ending": ending, "frames": len(run.video_arrivals), "freed_s": round(freed_s, 2), **probe()}
        if cycle == 0:
            baseline = {k: sample[k] for k in ("threads", "fds", "rss_mb")}
        elif cycle > 0:
            samples.append(sample)
    final = samples[-1]
    return {
        "cycles": cycles,
        "warmup_cycles": warmup,
        "seconds_per_cycle": seconds,
        "options": options,
        "baseline": baseline,
        "final": {k: final[k] for k in ("threads", "fds", "rss_mb")},
        "max": {k: max(s[k] for s in samples) for k in ("threads", "fds", "rss_mb")},
        "freed_s_by_ending": {e: max(s["freed_s"] for s in samples if s["ending"] == e) for e in ENDINGS if any(s["ending"] == e for s in samples)},
        "samples": samples,
    }


SERVER_LOG = Path("/tmp/lipsync-benchmark-server.log")


def start_server(port: int, backend: str, idle_timeout_s: float, log_level: str = "WARNING",
                 workers: int | None = None) -> subprocess.Popen[bytes]:
    """The server in its own process, as users run it; its log goes to SERVER_LOG."""
    extra = [] if workers is None else ["--workers", str(workers)]
    with SERVER_LOG.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "stream_server", "--log-level", log_level, "serve", "--port", str(port),
             "--backend", backend, "--idle-timeout", str(idle_timeout_s), *extra],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )
    return wait_listening(server, port)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    server = start_server(port, args.backend, args.idle_timeout, workers=args.workers)
    try:
        options = {"backend": args.backend, "avatar": args.avatar}
        warmup = args.warmup if args.warmup is not None else 1 + (os.cpu_count() or 1 if args.workers is None else args.workers)
        result = await churn(f"http://127.0.0.1:{port}", args.cycles, args.seconds, options, proc_probe(server.pid),
                             args.idle_timeout, warmup=warmup)
    finally:
        server.terminate()
        server.wait(timeout=20)
    result["command"] = "python -m benchmarks.churn " + " ".join(sys.argv[1:])
    result["tolerance"] = TOLERANCE
    result["within_tolerance"] = {
        "threads": result["final"]["threads"] - result["baseline"]["threads"] <= TOLERANCE["threads"],
        "fds": result["final"]["fds"] - result["baseline"]["fds"] <= TOLERANCE["fds"],
        "rss_mb": result["final"]["rss_mb"] - result["baseline"]["rss_mb"] <= TOLERANCE["rss_mb"],
    }
    return result


# what "back to baseline" allows after the cycles: thread pools may keep a spare worker, the
# allocator keeps some freed memory
TOLERANCE = {"threads": 2, "fds": 4, "rss_mb": 40.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=1.5, help="streaming time per cycle")
    parser.add_argument("--backend", default="passthrough")
    parser.add_argument("--avatar", default="camera")
    parser.add_argument("--idle-timeout", type=float, default=3.0, help="the server's --idle-timeout (finds vanished peers)")
    parser.add_argument("--workers", type=int, default=None, help="the server's --workers (default: its own default, one per core)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="cycles before the baseline (default: 1 + one per worker process, so that each has served "
                             "its first session: MediaPipe's graphs and the codecs' first buffers are not growth)")
    parser.add_argument("--name", default=None, help="result file name (default churn_BACKEND)")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    path = save(args.name or f"churn_{args.backend}", result)
    print({k: result[k] for k in ("baseline", "final", "max", "freed_s_by_ending", "within_tolerance")})
    print(f"written to {path}")


if __name__ == "__main__":
    main()
