"""Network faults: a live session through a UDP relay that loses 5% of packets and delays them
by up to 50 ms (so they arrive reordered, as with ``tc netem delay ... loss 5%``), in both
directions, between a clean start and a clean end. Measured per phase: frames per second
received, the A/V offset at the receiver (ITU-R BT.1359: perceptible beyond +45 / -125 ms), and
the server's own figures; "no drift" compares the offset after the faults with the one before.

``tc netem`` is not used because this machine's kernel has no sch_netem module; the relay
(benchmarks/netshim.py) does the same at the packet level, in user space.

    python -m benchmarks.netfaults [--clean 5] [--faults 60] [--after 15] [--backend passthrough]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from benchmarks.netshim import Faults, UdpRelay
from benchmarks.peer import av_offsets_timed, loop_clip, stream_clip
from benchmarks.results_io import ROOT, save

CLIP = ROOT.parent / "shared" / "testdata" / "video" / "pcavs_vox2_00086.mp4"
AUDIO_EARLY_S, AUDIO_LATE_S = 0.045, -0.125  # ITU-R BT.1359 thresholds of perception
SETTLE_S = 3.0  # left out at the start of each phase, while the receiver's buffers adapt


async def watch_stats(url: str, session_id: asyncio.Future[str], snapshots: list[tuple[float, dict[str, Any]]]) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{url}/ws/stats?session={await session_id}") as socket:
            async for message in socket:
                data = message.json()
                if data.get("type") == "stats":
                    snapshots.append((time.monotonic(), data))


def sender_skew(received: Any, clip_fps: float) -> np.ndarray:
    """Rows of (time, how much later the test peer itself handed video frame n to its encoder
    than the audio of the same instant): a lag the server can only pass on."""
    video, audio = received.video_handed, received.audio_handed
    rows = []
    for n, handed in enumerate(video):
        chunk = round(n / clip_fps / 0.02)
        if chunk < len(audio):
            rows.append((handed, handed - audio[chunk]))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 2)


def phase_figures(offsets: np.ndarray, arrivals: list[float], snapshots: list[tuple[float, dict[str, Any]]], start: float, end: float, skew: np.ndarray | None = None) -> dict[str, Any]:
    inside = offsets[(offsets[:, 0] >= start + SETTLE_S) & (offsets[:, 0] < end)][:, 1] if len(offsets) else np.zeros(0)
    frames = [a for a in arrivals if start + SETTLE_S <= a < end]
    stats = [s for t, s in snapshots if start + SETTLE_S <= t < end]
    figures: dict[str, Any] = {
        "seconds": round(end - start - SETTLE_S, 1),
        "fps_received": round((len(frames) - 1) / (frames[-1] - frames[0]), 2) if len(frames) > 1 else 0.0,
        "longest_gap_ms": round(float(np.max(np.diff(frames))) * 1000, 1) if len(frames) > 1 else None,
        "frames_with_offset": int(len(inside)),
    }
    if len(inside):
        figures["av_offset_ms"] = {
            "median": round(float(np.median(inside)) * 1000, 1),
            "p5": round(float(np.percentile(inside, 5)) * 1000, 1),
            "p95": round(float(np.percentile(inside, 95)) * 1000, 1),
        }
        figures["share_within_itu_bounds"] = round(float(np.mean((inside <= AUDIO_EARLY_S) & (inside >= AUDIO_LATE_S))), 3)
    if skew is not None and len(skew):
        inside_skew = skew[(skew[:, 0] >= start + SETTLE_S) & (skew[:, 0] < end)][:, 1]
        if len(inside_skew):
            figures["peer_video_after_audio_ms"] = round(float(np.median(inside_skew)) * 1000, 1)
    if stats:
        last = stats[-1]
        figures["server"] = {
            "delay_ms": last["delay_ms"],
            "jitter_ms": last["jitter_ms"],
            "latency_ms": last["latency_ms"],
            "frames": last["frames"],
        }
    return figures


async def run_netfaults(url: str, clean_s: float, fault_s: float, after_s: float, faults: Faults, options: dict[str, Any], work_dir: Path) -> dict[str, Any]:
    """Stream the looped clip through the relay: clean, faulty, clean again. Returns the figures."""
    total = clean_s + fault_s + after_s
    clip = loop_clip(CLIP, total + 5, work_dir)
    relay = UdpRelay(seed=1)
    session_id: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    snapshots: list[tuple[float, dict[str, Any]]] = []
    marks: dict[str, float] = {}

    async def schedule() -> None:
        marks["start"] = time.monotonic()
        await asyncio.sleep(clean_s)
        relay.faults = faults
        marks["faults_on"] = time.monotonic()
        await asyncio.sleep(fault_s)
        relay.faults = Faults()
        marks["faults_off"] = time.monotonic()

    tasks: list[asyncio.Task[None]] = []

    def on_answer(answer: dict[str, Any]) -> None:
        session_id.set_result(answer["session_id"])
        tasks.append(asyncio.create_task(schedule()))
        tasks.append(asyncio.create_task(watch_stats(url, session_id, snapshots)))

    try:
        received = await stream_clip(url, clip, total, options, on_answer=on_answer, relay=relay)
    finally:
        relay.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    end = time.monotonic()
    from engines.media_io import video_fps

    offsets = av_offsets_timed(received, clip, video_fps(clip))
    skew = sender_skew(received, video_fps(clip))
    arrivals = [a for a, _, _ in received.video]
    phases = {
        "before": phase_figures(offsets, arrivals, snapshots, marks["start"], marks["faults_on"], skew),
        "faults": phase_figures(offsets, arrivals, snapshots, marks["faults_on"], marks["faults_off"], skew),
        "after": phase_figures(offsets, arrivals, snapshots, marks["faults_off"], end, skew),
    }
    before, after = phases["before"].get("av_offset_ms"), phases["after"].get("av_offset_ms")
    return {
        "faults": {"loss": faults.loss, "delay_ms": faults.delay_s * 1000, "jitter_ms": faults.jitter_s * 1000, "both_directions": True},
        "phases_s": {"clean": clean_s, "faults": fault_s, "after": after_s, "settle_left_out": SETTLE_S},
        "options": options,
        "relay": {"forwarded": relay.counts.forwarded, "dropped": relay.counts.dropped},
        "phases": phases,
        "drift_ms": None if not (before and after) else round(after["median"] - before["median"], 1),
        "itu_bounds_ms": {"audio_early": AUDIO_EARLY_S * 1000, "audio_late": AUDIO_LATE_S * 1000},
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    from benchmarks.churn import free_port, start_server

    port = free_port()
    server = start_server(port, args.backend, 10.0)
    try:
        with tempfile.TemporaryDirectory() as work:
            faults = Faults(loss=args.loss, delay_s=0.0, jitter_s=args.jitter_ms / 1000.0)
            options = {"backend": args.backend, "avatar": "camera", "fps": 25, "width": 224, "height": 224}
            result = await run_netfaults(f"http://127.0.0.1:{port}", args.clean, args.faults, args.after, faults, options, Path(work))
    finally:
        server.terminate()
        server.wait(timeout=20)
    result["server_exit_code"] = server.returncode
    return result


def main() -> None:
    import sys

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clean", type=float, default=5.0, help="seconds before the faults")
    parser.add_argument("--faults", type=float, default=60.0, help="seconds of faults")
    parser.add_argument("--after", type=float, default=15.0, help="seconds after the faults (clip stamps last 80 s in all)")
    parser.add_argument("--loss", type=float, default=0.05)
    parser.add_argument("--jitter-ms", type=float, default=50.0)
    parser.add_argument("--backend", default="passthrough")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    result["command"] = "python -m benchmarks.netfaults " + " ".join(sys.argv[1:])
    path = save(args.name or f"netfaults_{args.backend}", result)
    print({k: result[k] for k in ("phases", "drift_ms", "relay")})
    print(f"written to {path}")


if __name__ == "__main__":
    main()
