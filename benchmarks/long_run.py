"""One long session: does anything drift or grow? (A/V offset, latency, memory.)

An aiortc peer sends a real talking clip (camera + microphone, looped, frames stamped) to the
server in its own process for ``--minutes`` with `mesh` on the camera. Per minute: the median
A/V offset at the receiver (stamps + RTCP sender reports), the median and p95 server latency
(``serve --trace``), the server's memory and threads. Drift is the last minute against the
second (the first holds the start-up).

    python -m benchmarks.long_run [--minutes 10] [--backend mesh]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.live import free_port, pct, start_server, stop_server
from benchmarks.loopback import CLIP
from benchmarks.peer import BLOCK, av_offsets, loop_clip, stream_clip
from benchmarks.proc_usage import UsageSampler
from benchmarks.results_io import ROOT, save
from benchmarks.stress import fps_windows, read_trace, trend_ms_per_min
from engines.media_io import video_fps


async def measure(backend: str, minutes: float) -> dict[str, Any]:
    seconds = minutes * 60.0
    clip = loop_clip(CLIP, seconds + 2.0, Path(tempfile.mkdtemp()))
    trace = Path(tempfile.mkdtemp()) / "trace.jsonl"
    port = free_port()
    server = start_server(port, ["--trace", str(trace)])
    usage = UsageSampler(server.pid, interval_s=5.0)
    sampler = asyncio.create_task(usage.run())
    try:
        received = await stream_clip(
            f"http://127.0.0.1:{port}", clip, seconds=seconds,
            options={"backend": backend, "avatar": "camera", "fps": 25, "width": 224, "height": 224},
            keep_rows=BLOCK,  # the stamps: ten minutes of whole frames would take gigabytes
        )
    finally:
        sampler.cancel()
        stop_server(server)
    offsets = av_offsets(received, clip, video_fps(clip))
    handoffs, latency = read_trace(trace)
    arrivals = np.array([arrival for arrival, _, _ in received.video])
    minutes_rows = []
    for minute in range(int(minutes)):
        lo, hi = minute * 60.0, (minute + 1) * 60.0
        in_latency = latency[(handoffs - handoffs[0] >= lo) & (handoffs - handoffs[0] < hi)]
        # the offsets come in received order, about evenly over the run: split them by minute
        in_offsets = offsets[minute * len(offsets) // int(minutes) : (minute + 1) * len(offsets) // int(minutes)]
        memory = [s[2] for s in usage.samples if lo <= s[0] < hi]
        threads = [s[3] for s in usage.samples if lo <= s[0] < hi]
        minutes_rows.append({
            "minute": minute + 1,
            "av_offset_ms_median": pct(in_offsets, 50) if len(in_offsets) else None,
            "latency_ms": {"p50": pct(in_latency, 50), "p95": pct(in_latency, 95)} if len(in_latency) else None,
            "rss_mb": max(memory) if memory else None,
            "threads": max(threads) if threads else None,
        })
    mean_fps, worst_fps, _ = fps_windows(list(arrivals), skip_s=3.0)
    second, last = minutes_rows[1] if len(minutes_rows) > 1 else minutes_rows[0], minutes_rows[-1]
    return {
        "backend": backend,
        "minutes": minutes,
        "fps_mean": round(mean_fps, 2),
        "fps_worst_1s": worst_fps,
        "av_offset_ms": {"median": pct(offsets, 50), "p5": pct(offsets, 5), "p95": pct(offsets, 95)},
        "av_offset_drift_ms": round(last["av_offset_ms_median"] - second["av_offset_ms_median"], 1),
        "latency_ms": {"p50": pct(latency, 50), "p95": pct(latency, 95), "p99": pct(latency, 99)},
        "latency_trend_ms_per_min": trend_ms_per_min(handoffs, latency),
        "rss_growth_mb": round(last["rss_mb"] - second["rss_mb"], 1),
        "server": usage.summary(60.0),
        "per_minute": minutes_rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="mesh")
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args()
    if args.minutes < 2:
        raise SystemExit("--minutes must be at least 2 (drift compares the last minute with the second)")
    result = {"benchmark": "long_run", **asyncio.run(measure(args.backend, args.minutes))}
    out = save(f"long_run_{args.backend}", result)
    print(json.dumps({k: v for k, v in result.items() if k != "per_minute"}, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
