"""How many sessions fit on this machine: N sessions at once on one server.

The server runs in its own process (``serve --trace``); this process runs N aiortc peers, each a
microphone playing real speech (looped) with a receive-only video section, so the server
lip-syncs the avatar (the bundled portrait by default) for each of them. Per N: every session's
received fps (mean after a 3 s start, worst 1 s window), its server latency from the trace, and
the server's CPU (cores busy) and memory. N holds when every session keeps a mean >= 24.5 fps,
a worst 1 s window >= 23 fps and a p95 server latency <= the backend's lookahead + 60 ms (the
live latency target of the loopback benchmark; 160 ms for ``mesh``). The peers' own CPU (VP8
decoding, Opus) is reported too: on a 2-core machine they compete with the server.

    python -m benchmarks.concurrency [--backend mesh] [--sessions 1,2,4,8] [--seconds 30] [--workers 0,default]

``--workers`` compares servers run with those ``--workers`` values side by side (each N with each
setting in turn): ``0`` is the backend in the server's own process, ``default`` one worker
process per core. The server's CPU, memory and threads include its worker processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.live import free_port, pct, start_server, stop_server
from benchmarks.peer import ArrayMicrophone, stream_microphone
from benchmarks.proc_usage import UsageSampler
from benchmarks.report import LATENCY_MARGIN_MS
from benchmarks.results_io import ROOT, save
from benchmarks.stress import fps_windows
from engines.media_io import load_audio
from stream_server.process_pool import default_workers

SPEECH = ROOT.parent / "shared" / "testdata" / "audio" / "musetalk_eng.wav"
SKIP_S = 3.0
HOLD_FPS = {"fps_mean": 24.5, "fps_worst_1s": 23.0}


def hold_rule(backend: str) -> dict[str, float]:
    from engines.registry import backend_class

    return {**HOLD_FPS, "latency_p95_ms": backend_class(backend).lookahead_s * 1000.0 + LATENCY_MARGIN_MS}


def session_latencies(trace: Path) -> dict[str, np.ndarray]:
    """Per session: (hand-off time, server latency s) of every frame with a known latency."""
    by_session: dict[str, list[tuple[float, float]]] = {}
    for line in trace.read_text().splitlines():
        record = json.loads(line)
        if record["latency_ms"] is not None:
            by_session.setdefault(record["session"], []).append((record["handoff"], record["latency_ms"] / 1000.0))
    return {sid: np.array(rows) for sid, rows in by_session.items()}


async def measure(backend: str, avatar: str, sessions: int, seconds: float, rule: dict[str, float],
                  workers: str = "default") -> dict[str, Any]:
    speech = load_audio(SPEECH, 48000)
    trace = Path(tempfile.mkdtemp()) / "trace.jsonl"
    port = free_port()
    extra = ["--trace", str(trace), "--max-sessions", str(max(sessions, 4))]
    if workers != "default":
        extra += ["--workers", workers]
    server = start_server(port, extra)
    url = f"http://127.0.0.1:{port}"
    # the server's figures include its worker processes; the peers' are this process alone
    server_usage, peer_usage = UsageSampler(server.pid), UsageSampler(os.getpid(), tree=False)
    samplers = [asyncio.create_task(server_usage.run()), asyncio.create_task(peer_usage.run())]
    ids: list[str] = []
    try:
        # each peer starts at another point of the speech, so the sessions do not move in step
        mics = [ArrayMicrophone(np.roll(speech, -k * 48000 * 7)) for k in range(sessions)]
        received = await asyncio.gather(*(
            stream_microphone(url, mic, seconds, {"backend": backend, "avatar": avatar, "fps": 25},
                              on_answer=lambda a: ids.append(a["session_id"]))
            for mic in mics
        ))
    finally:
        for task in samplers:
            task.cancel()
        stop_server(server)
    latencies = session_latencies(trace)
    per_session = []
    for session_id, got in zip(ids, received):
        mean, worst, _ = fps_windows([arrival for arrival, _, _ in got.video], skip_s=SKIP_S)
        rows = latencies.get(session_id, np.zeros((0, 2)))
        steady = rows[rows[:, 0] >= rows[0, 0] + SKIP_S, 1] if len(rows) else np.zeros(0)
        per_session.append({
            "fps_mean": round(mean, 2), "fps_worst_1s": worst,
            "latency_ms": {"p50": pct(steady, 50), "p95": pct(steady, 95)} if len(steady) else None,
        })
    holds = all(
        s["fps_mean"] >= rule["fps_mean"] and s["fps_worst_1s"] >= rule["fps_worst_1s"]
        and s["latency_ms"] is not None and s["latency_ms"]["p95"] <= rule["latency_p95_ms"]
        for s in per_session
    )
    return {
        "sessions": sessions,
        "workers": workers,
        "holds": holds,
        "fps_mean_min": min(s["fps_mean"] for s in per_session),
        "fps_worst_1s_min": min(s["fps_worst_1s"] for s in per_session),
        "latency_p95_ms_max": max((s["latency_ms"]["p95"] for s in per_session if s["latency_ms"]), default=None),
        "server": server_usage.summary(SKIP_S),
        "peers": peer_usage.summary(SKIP_S),
        "per_session": per_session,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="mesh")
    parser.add_argument("--avatar", default="astronaut")
    parser.add_argument("--sessions", default="1,2,4,8")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--workers", default="0,default",
                        help="the servers' --workers, compared side by side for each N (default '0,default': "
                             "the backend in the server's process, then the default worker processes)")
    args = parser.parse_args()
    settings = [w.strip() for w in args.workers.split(",") if w.strip()]
    rule = hold_rule(args.backend)
    by_workers: dict[str, list[dict[str, Any]]] = {w: [] for w in settings}
    for n in (int(x) for x in args.sessions.split(",")):
        for workers in settings:  # interleaved: both see the machine in the same state
            print(f"{n} session(s), --workers {workers}, for {args.seconds:.0f} s ...", flush=True)
            run = asyncio.run(measure(args.backend, args.avatar, n, args.seconds, rule, workers))
            by_workers[workers].append(run)
            print(f"  holds {run['holds']}: fps min {run['fps_mean_min']} (worst 1 s {run['fps_worst_1s_min']}), "
                  f"p95 latency max {run['latency_p95_ms_max']} ms, server {run['server']['cpu_cores_mean']} cores "
                  f"{run['server']['rss_mb_max']} MB, peers {run['peers']['cpu_cores_mean']} cores", flush=True)
    largest = {w: max([r["sessions"] for r in runs if r["holds"]], default=0) for w, runs in by_workers.items()}
    main_setting = settings[-1]
    result = {
        "benchmark": "concurrency", "backend": args.backend, "avatar": args.avatar, "seconds": args.seconds,
        "hold_rule": rule, "workers_default": default_workers(), "largest_n_holding": largest[main_setting],
        "largest_n_holding_by_workers": largest, "runs": by_workers[main_setting], "runs_by_workers": by_workers,
    }
    out = save(f"concurrency_{args.backend}_{args.avatar}", result)
    print(f"largest N holding: {largest}; wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
