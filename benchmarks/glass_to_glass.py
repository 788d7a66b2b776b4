"""Glass-to-glass: from a sound entering the microphone to the avatar's mouth reacting on screen.

An aiortc peer (in this process) plays a microphone track of silence with a short synthetic
open vowel every ``--period`` seconds, and receives the avatar (the bundled portrait, `mesh` by
default) from the server running in its own process, over real WebRTC on loopback. For each
vowel, the latency is the time from the vowel's first sample entering the microphone (the
capture instant of that sample) to the arrival, decoded, of the first output frame whose mouth
region differs from the closed mouth by more than half the typical reaction. Both ends are on
this machine's monotonic clock. It includes the sender's 20 ms audio framing, Opus, the network
stack, aiortc's jitter buffers, the server's whole path, VP8 encode and decode; not a display's
refresh or a browser's playout delay.

Also reported: how far the mouth's reaction leads or lags the vowel's sound when both are placed
on the sender's clock by the RTCP sender reports (as a receiver synchronising playout does).

    python -m benchmarks.glass_to_glass [--backend mesh] [--events 100] [--period 1.2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import numpy as np

from benchmarks.live import free_port, pct, start_server, stop_server
from benchmarks.peer import ArrayMicrophone, Received, stream_microphone
from benchmarks.results_io import save

RATE = 48000
LEAD_IN_S = 2.0  # silence first: the server starts and the closed mouth is learnt
VOWEL_S = 0.2
SEARCH_S = 0.8  # a reaction later than this after a vowel counts as missed


def open_vowel(seconds: float, f0: float = 120.0) -> np.ndarray:
    """A synthetic /a/: harmonics of f0 shaped by its first three formants, 10 ms fade in."""
    t = np.arange(round(seconds * RATE)) / RATE
    signal = np.zeros_like(t)
    for harmonic in range(1, int(4000 / f0)):
        f = harmonic * f0
        gain = sum(1.0 / (1.0 + ((f - centre) / width) ** 2) for centre, width in ((700, 80), (1220, 90), (2600, 120)))
        signal += gain / np.sqrt(harmonic) * np.sin(2 * np.pi * f * t)
    envelope = np.minimum(1.0, np.minimum(t / 0.01, (seconds - t) / 0.02))
    return (0.5 * signal / np.abs(signal).max() * envelope).astype(np.float32)


def vowel_track(events: int, period_s: float) -> tuple[np.ndarray, list[int]]:
    """Silence with a vowel every ``period_s``; returns the samples and each vowel's first sample."""
    onsets = [round((LEAD_IN_S + k * period_s) * RATE) for k in range(events)]
    pcm = np.zeros(onsets[-1] + round((period_s + 1.0) * RATE), np.float32)
    vowel = open_vowel(VOWEL_S)
    for onset in onsets:
        pcm[onset : onset + len(vowel)] = vowel
    return pcm, onsets


def mouth_box(rgb: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns around the inner lips of the face in ``rgb`` (FaceMesh)."""
    from engines.face import FaceLandmarker

    with FaceLandmarker(max_faces=1) as landmarker:
        faces = landmarker.faces(rgb)
    if not faces:
        raise SystemExit("no face in the received avatar: cannot watch its mouth")
    points = faces[0].landmarks
    cx, cy = points[[13, 14], 0].mean(), points[[13, 14], 1].mean()
    width = abs(points[308, 0] - points[78, 0])
    return slice(int(cy - 0.15 * width), int(cy + 0.25 * width)), slice(int(cx - 0.3 * width), int(cx + 0.3 * width))


def mouth_change(received: Received) -> tuple[np.ndarray, np.ndarray]:
    """Arrival times of the received frames and how far each one's mouth region is from the
    closed mouth (mean absolute difference from the frames received during the lead-in)."""
    arrivals = np.array([arrival for arrival, _, _ in received.video])
    frames = [rgb for _, _, rgb in received.video]
    first = arrivals[0]
    closed = [rgb for arrival, rgb in zip(arrivals, frames) if first + 0.3 <= arrival <= first + 1.0]
    rows, cols = mouth_box(closed[0])
    reference = np.mean([rgb[rows, cols].astype(np.float32) for rgb in closed], axis=0)
    change = np.array([np.abs(rgb[rows, cols].astype(np.float32) - reference).mean() for rgb in frames])
    return arrivals, change


def reaction_latencies(
    captures: list[float | None], arrivals: np.ndarray, change: np.ndarray
) -> tuple[list[float], list[int], int]:
    """Per vowel (the times its first sample entered the microphone): the time to the first
    frame whose mouth has moved 30 % of the way from where it was just before (closed) to the
    typical open mouth. Returns the latencies, the index of each reacting frame (-1 if none)
    and how many vowels found the mouth not yet closed from the one before (left out)."""
    windows = []
    for sent in captures:
        inside = np.flatnonzero((arrivals >= sent) & (arrivals < sent + SEARCH_S)) if sent is not None else np.zeros(0, int)
        before = np.flatnonzero((arrivals >= sent - 0.2) & (arrivals < sent)) if sent is not None else np.zeros(0, int)
        windows.append((sent, inside, before))
    peak = float(np.median([change[inside].max() for _, inside, _ in windows if len(inside)]))
    latencies, frames, not_closed = [], [], 0
    for sent, inside, before in windows:
        rest = float(np.median(change[before])) if len(before) else float(change[inside[0]]) if len(inside) else peak
        if rest > 0.3 * peak:
            not_closed += 1
            frames.append(-1)
            continue
        threshold = rest + 0.3 * (peak - rest)
        hits = [i for i in inside if change[i] > threshold]
        frames.append(hits[0] if hits else -1)
        if hits:
            latencies.append(float(arrivals[hits[0]] - sent))
    return latencies, frames, not_closed


def mouth_vs_sound(received: Received, onsets: list[int], reacting: list[int]) -> list[float]:
    """Per vowel, when its reacting frame is presented minus when the vowel's sound is, both on
    the sender's clock by the RTCP sender reports (negative: the mouth moves before the sound,
    as the model's lookahead lets it)."""
    audio = np.concatenate([samples for _, _, samples in received.audio])
    starts = np.cumsum([0] + [len(samples) for _, _, samples in received.audio])
    loud = np.flatnonzero(np.abs(audio) > 0.05)
    sound_onsets = loud[np.concatenate([[True], np.diff(loud) > RATE * 0.2])]  # first sample of each vowel
    video_time, audio_time = received.sender_time["video"], received.sender_time["audio"]
    offsets = []
    if len(sound_onsets) != len(onsets):
        return []  # a vowel lost or split in the received audio: cannot pair them up
    for k, frame in enumerate(reacting):
        if frame < 0:
            continue
        sample = sound_onsets[k]
        chunk = int(np.searchsorted(starts, sample, side="right")) - 1
        sound = audio_time(received.audio[chunk][1]) + (sample - starts[chunk]) / RATE
        offsets.append(video_time(received.video[frame][1]) - sound)
    return offsets


async def measure(backend: str, avatar: str, events: int, period_s: float) -> dict[str, Any]:
    pcm, onsets = vowel_track(events, period_s)
    mic = ArrayMicrophone(pcm)
    port = free_port()
    server = start_server(port)
    try:
        received = await stream_microphone(
            f"http://127.0.0.1:{port}", mic, seconds=len(pcm) / RATE,
            options={"backend": backend, "avatar": avatar, "fps": 25},
        )
    finally:
        stop_server(server)
    arrivals, change = mouth_change(received)
    latencies, reacting, not_closed = reaction_latencies([mic.capture_time(o) for o in onsets], arrivals, change)
    offsets = mouth_vs_sound(received, onsets, reacting)
    result: dict[str, Any] = {
        "backend": backend,
        "avatar": avatar,
        "events": events,
        "reacted": len(latencies),
        "period_s": period_s,
        "vowel_ms": VOWEL_S * 1000,
        "mouth_not_closed_before": not_closed,
        "glass_to_glass_ms": {q: pct(latencies, int(q[1:])) for q in ("p50", "p95", "p99")} if latencies else None,
        "glass_to_glass_ms_min_max": [pct(latencies, 0), pct(latencies, 100)] if latencies else None,
        "mouth_vs_sound_ms": {q: pct(offsets, int(q[1:])) for q in ("p5", "p50", "p95")} if offsets else None,
        "latencies_ms": [round(x * 1000, 1) for x in latencies],
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="mesh")
    parser.add_argument("--avatar", default="astronaut")
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--period", type=float, default=1.2, help="seconds between vowels")
    args = parser.parse_args()
    result = {"benchmark": "glass_to_glass", **asyncio.run(measure(args.backend, args.avatar, args.events, args.period))}
    out = save(f"glass_to_glass_{args.backend}", result)
    print(json.dumps({k: v for k, v in result.items() if k != "latencies_ms"}, indent=2))
    print(f"wrote {out.relative_to(out.parents[2])}")


if __name__ == "__main__":
    main()
