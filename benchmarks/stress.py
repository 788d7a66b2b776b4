"""The scheduler under stress: a backend slower or faster than real time, and random stalls.

Each case runs twice:

- **live**: the server in its own process with the ``slowed`` backend (benchmarks/slowed_server.py:
  the base frame after the time a backend at that speed would take), an aiortc peer sending a
  real talking clip with stamped frames over WebRTC on loopback for ``--seconds``. Output fps
  (mean, and the worst 1 s window) as received, frame counts from the server, every frame's
  server latency (from ``serve --trace``) with its trend, and the A/V offset at the receiver
  (from the stamps and RTCP sender reports) at the start and end of the run.
- **simulated**: the same scheduler on a simulated clock for ``--sim-seconds`` (300 by default),
  with the case's service times and 0-30 ms of random audio arrival jitter: counts, latency
  trend, and how old the shown picture is against the slot (repeated frames show an older one).

    python -m benchmarks.stress [--seconds 60] [--sim-seconds 300] [--cases 0.5x,0.8x,1.2x,2x,stalls]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.live import free_port, pct, start_server, stop_server, watch_stats
from benchmarks.loopback import CLIP
from benchmarks.peer import Received, av_offsets, loop_clip, stream_clip
from benchmarks.results_io import save
from engines.media_io import video_fps
from stream_server.scheduler import FrameKind, FrameScheduler, SchedulerConfig, budget_for
from stream_server.simulate import simulate

FPS = 25
LOOKAHEAD_S = 0.1
# name -> (speed as a fraction of real time, stall probability per frame, stall seconds)
CASES: dict[str, tuple[float, float, float]] = {
    "0.5x": (0.5, 0.0, 0.0),
    "0.8x": (0.8, 0.0, 0.0),
    "1.2x": (1.2, 0.0, 0.0),
    "2x": (2.0, 0.0, 0.0),
    "stalls": (1.2, 0.01, 0.5),  # 1 % of frames stall for 0.5 s: one stall every 4 s or so
}


def fps_windows(arrivals: list[float], skip_s: float = 2.0) -> tuple[float, float, list[float]]:
    """Mean fps after ``skip_s``, the worst 1 s window (sliding by 0.1 s), and fps per second."""
    times = np.asarray(arrivals)
    times = times[times >= times[0] + skip_s]
    mean = (len(times) - 1) / (times[-1] - times[0])
    starts = np.arange(times[0], times[-1] - 1.0, 0.1)
    counts = np.searchsorted(times, starts + 1.0) - np.searchsorted(times, starts)
    per_second = [int(n) for n in np.histogram(times, bins=np.arange(times[0], times[-1], 1.0))[0]]
    return float(mean), float(counts.min()), per_second


def trend_ms_per_min(times: np.ndarray, values_s: np.ndarray) -> float:
    """Slope of a straight-line fit, in ms per minute (creep shows as a clear positive slope)."""
    if len(times) < 10:
        return float("nan")
    slope = np.polyfit(times - times[0], values_s * 1000.0, 1)[0]
    return round(float(slope * 60.0), 2)


def read_trace(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Hand-off times and server latencies (s) of every frame with a known latency."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    pairs = [(r["handoff"], r["latency_ms"] / 1000.0) for r in records if r["latency_ms"] is not None]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def offsets_summary(offsets: np.ndarray) -> dict[str, Any] | None:
    """Median A/V offset overall and in the first and last thirds of the run (drift)."""
    if len(offsets) < 30:
        return None
    third = len(offsets) // 3
    return {
        "median": pct(offsets, 50), "p5": pct(offsets, 5), "p95": pct(offsets, 95),
        "first_third_median": pct(offsets[:third], 50), "last_third_median": pct(offsets[-third:], 50),
    }


async def live_case(name: str, seconds: float, clip: Path) -> dict[str, Any]:
    speed, stall_prob, stall_s = CASES[name]
    trace = Path(tempfile.mkdtemp()) / "trace.jsonl"
    env = {"BENCH_SPEED": str(speed), "BENCH_STALL_PROB": str(stall_prob), "BENCH_STALL_S": str(stall_s), "BENCH_FPS": str(FPS)}
    os.environ.update(env)  # the server process inherits them
    port = free_port()
    server = start_server(port, ["--trace", str(trace)], module="benchmarks.slowed_server")
    url = f"http://127.0.0.1:{port}"
    snapshots: list[dict[str, Any]] = []
    try:
        session_id: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        watcher = asyncio.create_task(watch_stats(url, session_id, snapshots))
        received: Received = await stream_clip(
            url, clip, seconds=seconds,
            options={"backend": "slowed", "avatar": "camera", "fps": FPS, "width": 224, "height": 224},
            on_answer=lambda a: session_id.set_result(a["session_id"]),
        )
        watcher.cancel()
    finally:
        stop_server(server)
    mean_fps, worst_fps, per_second = fps_windows([arrival for arrival, _, _ in received.video])
    handoffs, latency = read_trace(trace)
    final = snapshots[-1]
    return {
        "fps_mean": round(mean_fps, 2),
        "fps_worst_1s": worst_fps,
        "fps_per_second": per_second,
        "frames": final["frames"],
        "delay_ms": final["delay_ms"],
        "latency_ms": {"p50": pct(latency, 50), "p95": pct(latency, 95), "p99": pct(latency, 99)},
        "latency_trend_ms_per_min": trend_ms_per_min(handoffs, latency),
        "latency_p50_first_last_third_ms": [pct(latency[: len(latency) // 3], 50), pct(latency[-(len(latency) // 3) :], 50)],
        "av_offset_ms": offsets_summary(av_offsets(received, clip, video_fps(clip))),
        "latencies_ms": [round(float(x) * 1000, 1) for x in latency],  # every frame's, for the plots
    }


def simulated_case(name: str, seconds: float, seed: int = 0) -> dict[str, Any]:
    speed, stall_prob, stall_s = CASES[name]
    frame_s = 1.0 / (speed * FPS)
    rng = random.Random(seed)
    service = {}

    def service_s(slot: int) -> float:
        if slot not in service:  # +-10 % around the backend's speed, and the stalls
            stall = stall_s if rng.random() < stall_prob else 0.0
            service[slot] = frame_s * rng.uniform(0.9, 1.1) + stall
        return service[slot]

    jitter = [rng.uniform(0.0, 0.03) for _ in range(int(seconds / 0.02) + 100)]
    config = SchedulerConfig(fps=FPS, lookahead_s=LOOKAHEAD_S, budget_s=budget_for(frame_s, FPS))
    scheduler: FrameScheduler[int] = FrameScheduler(config, backend_s=frame_s)
    run = simulate(scheduler, seconds, generate=lambda slots: list(slots), service_s=service_s,
                   audio_delay_s=lambda chunk: jitter[chunk])

    def arrival(media_s: float) -> float:  # when the audio up to media_s had arrived
        chunk = max(0, int(np.ceil(media_s / 0.02 - 1e-9)) - 1)
        return (chunk + 1) * 0.02 + jitter[chunk]

    times, latency, age = [], [], []
    for now, emission in run.emissions:
        newest = emission.slot / FPS + LOOKAHEAD_S
        times.append(now)
        latency.append(now - arrival(newest) + LOOKAHEAD_S)
        if emission.kind is FrameKind.INTERPOLATED:
            shown = (1 - emission.weight) * emission.sources[0] + emission.weight * emission.sources[1]
        else:
            shown = emission.sources[0] if emission.sources else emission.slot
        age.append((emission.slot - shown) / FPS)
    t, lat, old = np.array(times), np.array(latency), np.array(age)
    return {
        "seconds": seconds,
        "frames": scheduler.counts.as_dict(),
        "delay_ms": round(config.delay_s * 1000, 1),
        "latency_ms": {"p50": pct(lat, 50), "p95": pct(lat, 95), "max": pct(lat, 100)},
        "latency_trend_ms_per_min": trend_ms_per_min(t, lat),
        "picture_age_ms": {"mean": round(float(old.mean()) * 1000, 1), "p95": pct(old, 95), "max": pct(old, 100)},
        "max_queued": run.max_queued,
    }


async def run(cases: list[str], seconds: float, sim_seconds: float) -> dict[str, Any]:
    clip = loop_clip(CLIP, seconds + 2.0, Path(tempfile.mkdtemp()))
    results: dict[str, Any] = {}
    for name in cases:
        print(f"stress {name}: simulated {sim_seconds:.0f} s, live {seconds:.0f} s ...", flush=True)
        results[name] = {
            "speed": CASES[name][0], "stall_prob": CASES[name][1], "stall_s": CASES[name][2],
            "simulated": simulated_case(name, sim_seconds),
            "live": await live_case(name, seconds, clip),
        }
        live = results[name]["live"]
        print(f"  fps {live['fps_mean']} (worst 1 s {live['fps_worst_1s']}), latency p95 {live['latency_ms']['p95']} ms, "
              f"trend {live['latency_trend_ms_per_min']} ms/min, frames {live['frames']}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="live run per case")
    parser.add_argument("--sim-seconds", type=float, default=300.0, help="simulated run per case")
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; valid: {', '.join(CASES)}")
    result = {"benchmark": "scheduler_stress", "fps": FPS, "live_seconds": args.seconds, "cases": asyncio.run(run(cases, args.seconds, args.sim_seconds))}
    out = save("stress", result)
    print(f"wrote {out.relative_to(out.parents[2])}")


if __name__ == "__main__":
    main()
