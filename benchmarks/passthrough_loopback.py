"""Frame rate, server latency and A/V offset of a live session over real WebRTC on loopback.

An aiortc peer sends a real talking clip (camera + microphone, looped) to a server started in
this process, for ``--seconds``; the figures come from what the peer receives (fps, A/V offset
by the sender reports) and from the server's own per-frame records (server latency, counts).

    python -m benchmarks.passthrough_loopback [--backend passthrough] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from benchmarks.peer import av_offsets, loop_clip, output_fps, stream_clip
from stream_server import stats
from stream_server.app import SERVER, create_app
from stream_server.config import Settings
from stream_server.media_io import video_fps

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CLIP = ROOT.parent / "shared" / "testdata" / "video" / "pcavs_vox2_00086.mp4"


def machine() -> dict[str, Any]:
    import aiortc
    import av

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "aiortc": aiortc.__version__,
        "av": av.__version__,
        "git_commit": commit,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def pct(values: list[float] | np.ndarray, q: float) -> float:
    return round(float(np.percentile(np.asarray(values) * 1000.0, q)), 1)


async def measure(backend: str, seconds: float, avatar: str) -> dict[str, Any]:
    clip = loop_clip(CLIP, seconds + 2.0, Path(tempfile.mkdtemp()))
    app = create_app(Settings(port=0))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    server = app[SERVER]
    sessions = []

    async def watch() -> None:
        while True:  # keep hold of the session: its stats outlive it
            sessions.extend(s for s in server.sessions.values() if s not in sessions)
            await asyncio.sleep(0.2)

    stats.WINDOW_FRAMES = 1_000_000  # keep every frame's figures for the whole run
    watcher = asyncio.create_task(watch())
    options = {"backend": backend, "avatar": avatar, "fps": 25}
    if avatar == "camera":
        options.update(width=224, height=224)
    try:
        received = await stream_clip(url, clip, seconds=seconds, options=options)
    finally:
        watcher.cancel()
        await runner.cleanup()
    (session,) = sessions
    latencies = list(session.stats.latency_s)
    offsets = av_offsets(received, clip, video_fps(clip)) if avatar == "camera" else np.zeros(0)
    return {
        "backend": backend,
        "avatar": avatar,
        "seconds": seconds,
        "fps_received": round(output_fps(received), 2),
        "server_latency_ms": {"p50": pct(latencies, 50), "p95": pct(latencies, 95), "p99": pct(latencies, 99), "frames": len(latencies)},
        # frames sent before their audio had arrived (late packets): no latency can be given
        "sent_before_audio": session.stats.sent_before_audio,
        "av_offset_ms": (
            {"median": pct(offsets, 50), "p5": pct(offsets, 5), "p95": pct(offsets, 95)} if len(offsets) else None
        ),
        "frames": session.scheduler.counts.as_dict(),
        "delay_ms": round(session.scheduler.config.delay_s * 1000.0, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="passthrough")
    parser.add_argument("--avatar", default="camera", help="camera (the clip's video) or astronaut")
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    if not CLIP.exists():
        raise SystemExit(f"missing test clip {CLIP} (../shared/testdata beside the checkout)")
    result = {"benchmark": "loopback_session", "machine": machine(), **asyncio.run(measure(args.backend, args.seconds, args.avatar))}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"loopback_{args.backend}_{args.avatar}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
