"""Soak: several sessions at once for a long time (default 4 for 30 minutes) against a server in
its own process. Every ``--every`` seconds it records the server's resident memory, threads and
open files, and each session's frames per second out and server latency (p50 / p95, from the
stats the page gets). Passes when, after the warm-up, memory grows by no more than
``--rss-bound-mb`` and the latency of the last five minutes is no more than ``--latency-creep-ms``
above that of the first five after the warm-up.

    python -m benchmarks.soak [--sessions 4] [--minutes 30] [--backend mesh] [--avatar astronaut] [--fps 25]

Each peer runs in its own process, as separate users would: four aiortc peers in one Python
process saturate its one core, send their audio late and in bursts, and the server can only
drop the frames (their sessions even ended when ICE consent checks went unanswered). With a
portrait avatar the peers send no camera. Not part of the test suite (it takes half an hour of
a quiet machine).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import signal
import sys
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import aiohttp
import numpy as np

from benchmarks.churn import free_port, proc_probe, start_server
from benchmarks.results_io import save
from benchmarks.synthetic_peer import PeerRun, run_peer


def peer_process(url: str, seconds: float, options: dict[str, Any], camera: bool, report: Connection) -> None:
    """One peer in a process of its own: sends its session id back, then streams to the end."""

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s peer {os.getpid()} %(name)s: %(message)s")
    for quiet in ("aiortc", "aioice"):  # their INFO is per packet; consent expiry is a warning-worthy line
        logging.getLogger(quiet).setLevel(logging.INFO if quiet == "aioice" else logging.WARNING)

    parent = os.getppid()

    async def orphaned() -> None:  # a peer whose soak was killed must not stream on
        while os.getppid() == parent:
            await asyncio.sleep(1.0)

    async def stream() -> None:
        run = PeerRun()
        peer = asyncio.create_task(run_peer(url, seconds, options, run=run, camera=camera))
        asyncio.create_task(orphaned()).add_done_callback(lambda _: peer.cancel())
        while not run.session_id and not peer.done():
            await asyncio.sleep(0.05)
        report.send(run.session_id or f"refused: {run.status} {run.answer}")
        await peer

    asyncio.run(stream())


async def start_peers(url: str, count: int, seconds: float, options: dict[str, Any]) -> tuple[list[BaseProcess], list[str]]:
    context = multiprocessing.get_context("spawn")
    processes, ids = [], []
    for _ in range(count):
        ours, theirs = context.Pipe(duplex=False)
        process = context.Process(target=peer_process, args=(url, seconds, options, options["avatar"] == "camera", theirs), daemon=True)
        process.start()
        session_id = await asyncio.to_thread(ours.recv)
        if session_id.startswith("refused"):
            raise RuntimeError(f"the server refused a soak peer: {session_id}")
        processes.append(process)
        ids.append(session_id)
    return processes, ids


async def follow(url: str, session_id: str, latest: dict[str, dict[str, Any]], ended: list[dict[str, Any]]) -> None:
    """Keep the newest stats the server pushes for this session."""
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{url}/ws/stats?session={session_id}") as socket:
            async for message in socket:
                data = message.json()
                if data.get("type") == "stats":
                    latest[session_id] = data
                elif data.get("type") == "closed":
                    ended.append({"session": session_id, "at": time.monotonic(), "reason": data["reason"]})
                    latest.pop(session_id, None)


async def loop_lag_ms(url: str) -> float | None:
    """The server's worst event-loop lateness over the last 10 s (from /healthz)."""
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/healthz") as response:
                return (await response.json()).get("loop_lag_ms")
    except aiohttp.ClientError:
        return None


def window(samples: list[dict[str, Any]], start: float, end: float, key: str) -> float | None:
    values = [s[key] for s in samples if start <= s["t_s"] < end and s.get(key) is not None]
    return round(float(np.median(values)), 1) if values else None


def summarize(samples: list[dict[str, Any]], warm: float, end: float, rss_bound_mb: float, creep_ms: float) -> dict[str, Any]:
    """Memory growth after the warm-up, and the latency of the first and last windows after it
    (five minutes each, or a third of what follows the warm-up in a shorter run)."""
    span = min(300.0, (end - warm) / 3.0)
    rss_after_warmup = [s["rss_mb"] for s in samples if s["t_s"] >= warm]
    first, last = (warm, warm + span), (end - span, end + 1.0)
    rss = {"after_warmup": rss_after_warmup[0] if rss_after_warmup else None, "max": max(rss_after_warmup, default=None), "end": samples[-1]["rss_mb"] if samples else None}
    p95 = {"first_window": window(samples, *first, "latency_p95_ms"), "last_window": window(samples, *last, "latency_p95_ms")}
    return {
        "warmup_s": warm,
        "windows_s": {"first": first, "last": last},
        "rss_mb": rss,
        "latency_p95_ms": p95,
        "latency_p50_ms": {"first_window": window(samples, *first, "latency_p50_ms"), "last_window": window(samples, *last, "latency_p50_ms")},
        "fps_out_min": min((s["fps_out_min"] for s in samples if s["fps_out_min"] is not None), default=None),
        "bounds": {"rss_growth_mb": rss_bound_mb, "latency_creep_ms": creep_ms},
        "passed": {
            "memory": rss["max"] is not None and rss["max"] - rss["after_warmup"] <= rss_bound_mb,
            "latency": None not in p95.values() and p95["last_window"] - p95["first_window"] <= creep_ms,
        },
    }


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    server = start_server(port, args.backend, 10.0, log_level="INFO")
    url = f"http://127.0.0.1:{port}"
    probe = proc_probe(server.pid)
    seconds = args.minutes * 60.0
    options = {"backend": args.backend, "avatar": args.avatar, "fps": args.fps}
    if args.avatar != "camera":
        options.update(width=args.size, height=args.size)
    latest: dict[str, dict[str, Any]] = {}
    peers: list[BaseProcess] = []
    ended: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    try:
        peers, session_ids = await start_peers(url, args.sessions, seconds, options)
        followers = [asyncio.create_task(follow(url, session_id, latest, ended)) for session_id in session_ids]
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            await asyncio.sleep(args.every)
            stats = list(latest.values())
            p95s = [s["latency_ms"]["p95"] for s in stats if s["latency_ms"]["p95"] is not None]
            p50s = [s["latency_ms"]["p50"] for s in stats if s["latency_ms"]["p50"] is not None]
            fps = [s["fps_out"] for s in stats if s["fps_out"] is not None]
            sample = {
                "t_s": round(time.monotonic() - started, 1),
                **probe(),
                "loop_lag_ms": await loop_lag_ms(url),
                "sessions": len(stats),
                "latency_p50_ms": round(float(np.median(p50s)), 1) if p50s else None,
                "latency_p95_ms": round(float(max(p95s)), 1) if p95s else None,
                "fps_out_min": min(fps) if fps else None,
                "frames": [s["frames"] for s in stats],
            }
            samples.append(sample)
            print(sample, flush=True)
        for process in peers:
            await asyncio.to_thread(process.join, 30.0)
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
    finally:
        for process in peers:
            process.terminate() if process.is_alive() else None
        server.terminate()
        server.wait(timeout=20)
    result: dict[str, Any] = {
        "command": "python -m benchmarks.soak " + " ".join(sys.argv[1:]),
        "sessions": args.sessions,
        "minutes": args.minutes,
        "options": options,
        # a session that ended other than by its peer's goodbye at the end of the run
        "ended_early": [{**e, "at": round(e["at"] - started, 1)} for e in ended if e["reason"] != "closed by the client"],
        **summarize(samples, args.warmup_s, seconds, args.rss_bound_mb, args.latency_creep_ms),
        "samples": samples,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--backend", default="mesh")
    parser.add_argument("--avatar", default="astronaut")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--size", type=int, default=256, help="output side for an image avatar")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--warmup-s", type=float, default=120.0)
    parser.add_argument("--rss-bound-mb", type=float, default=50.0)
    parser.add_argument("--latency-creep-ms", type=float, default=10.0)
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the peers are stopped on the way out
    result = asyncio.run(soak(args))
    path = save(args.name or f"soak_{args.backend}_{args.sessions}x{args.minutes:g}min", result)
    print({k: result[k] for k in ("rss_mb", "latency_p95_ms", "latency_p50_ms", "fps_out_min", "passed")})
    print(f"written to {path}")


if __name__ == "__main__":
    main()
