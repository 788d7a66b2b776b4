"""Frame rate, server latency and A/V offset of a live session over real WebRTC on loopback.

An aiortc peer sends a real talking clip (camera + microphone, looped) for ``--seconds`` to the
server running in its own process, as users run it; the figures come from what the peer
receives (fps, A/V offset by the sender reports) and from the stats the server pushes to the
page (server latency over its last 10 s, frame counts).

    python -m benchmarks.loopback [--backend passthrough] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.live import free_port, pct, start_server, stop_server, watch_stats
from benchmarks.results_io import ROOT, save
from benchmarks.peer import av_offsets, loop_clip, output_fps, stream_clip
from engines.media_io import video_fps

CLIP = ROOT.parent / "shared" / "testdata" / "video" / "pcavs_vox2_00086.mp4"


async def measure(backend: str, seconds: float, avatar: str, workers: int | None = None) -> dict[str, Any]:
    clip = loop_clip(CLIP, seconds + 2.0, Path(tempfile.mkdtemp()))
    port = free_port()
    server = start_server(port, [] if workers is None else ["--workers", str(workers)])
    url = f"http://127.0.0.1:{port}"
    options: dict[str, Any] = {"backend": backend, "avatar": avatar, "fps": 25}
    if avatar == "camera":
        options.update(width=224, height=224)
    snapshots: list[dict[str, Any]] = []
    try:
        session_id: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        watcher = asyncio.create_task(watch_stats(url, session_id, snapshots))
        received = await stream_clip(url, clip, seconds=seconds, options=options, on_answer=lambda a: session_id.set_result(a["session_id"]))
        watcher.cancel()
    finally:
        stop_server(server)
    final = snapshots[-1]  # the last stats before the session closed: its last 10 s of frames
    offsets = av_offsets(received, clip, video_fps(clip)) if avatar == "camera" else np.zeros(0)
    return {
        "backend": backend,
        "avatar": avatar,
        "workers": "default" if workers is None else workers,
        "seconds": seconds,
        "fps_received": round(output_fps(received), 2),
        "server_fps_out": final["fps_out"],
        "server_latency_ms_last_10s": final["latency_ms"],
        "backend_ms_last_10s": final["backend_ms"],
        "stages_ms_last_10s": final["stages_ms"],  # generated frames, stream_server/stages.py
        "delay_ms": final["delay_ms"],
        "lookahead_ms": final["lookahead_ms"],
        "jitter_allowance_ms": final["jitter_ms"],
        # frames sent before their audio had arrived (late packets): no latency can be given
        "sent_before_audio": final["sent_before_audio"],
        "av_offset_ms": (
            {"median": pct(offsets, 50), "p5": pct(offsets, 5), "p95": pct(offsets, 95)} if len(offsets) else None
        ),
        "frames": final["frames"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="passthrough")
    parser.add_argument("--avatar", default="camera", help="camera (the clip's video) or astronaut")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=None, help="the server's --workers (default: its default)")
    parser.add_argument("--name", default=None, help="result file name (default loopback_BACKEND_AVATAR)")
    args = parser.parse_args()
    if not CLIP.exists():
        raise SystemExit(f"missing test clip {CLIP} (../shared/testdata beside the checkout)")
    result = {"benchmark": "loopback_session", **asyncio.run(measure(args.backend, args.seconds, args.avatar, args.workers))}
    out = save(args.name or f"loopback_{args.backend}_{args.avatar}", result)
    print(json.dumps(result, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
