"""Real WebRTC on loopback: an aiortc peer sends a real talking clip and receives the output."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from tests.media import shared_media, video_fps
from stream_server.stages import STAGES, TraceWriter
from benchmarks.peer import av_offsets, output_fps, stream_clip

pytestmark = pytest.mark.usefixtures("steady_gc")  # timed streams in this process

CLIP = ("video", "pcavs_vox2_00086.mp4")  # 224x224, 25 fps, speech


async def test_camera_passthrough_holds_fps_and_one_clock(server_url: str) -> None:
    clip = shared_media(*CLIP)
    received = await stream_clip(
        server_url, clip, seconds=5.0,
        options={"backend": "passthrough", "avatar": "camera", "fps": 25, "width": 224, "height": 224},
    )
    assert received.answer["options"]["backend"] == "passthrough"
    fps = output_fps(received)
    assert 23.0 <= fps <= 27.0, f"output video at {fps:.1f} fps"
    offsets = av_offsets(received, clip, video_fps(clip))
    assert len(offsets) > 50, "too few stamped frames came back"
    median = float(np.median(offsets))
    print(f"fps {fps:.2f}, A/V offset median {median * 1000:.1f} ms, p5..p95 "
          f"{np.percentile(offsets, 5) * 1000:.1f}..{np.percentile(offsets, 95) * 1000:.1f} ms")
    # within half a frame: a slot cut before its camera frame had come showed the picture before
    # (+29 ms with a 1-packet audio buffer, when slots did not wait for the camera)
    assert abs(median) <= 0.020, f"A/V offset {median * 1000:.1f} ms is more than half a frame"
    # a receiver that joined 1.2 s late (an SFU's late viewer) measures the same offset: the
    # measure finds the audio of what it joined at, not of the clip's start
    joined = received.video[0][0] + 1.2
    late = dataclasses.replace(received, video=[v for v in received.video if v[0] >= joined],
                               audio=[a for a in received.audio if a[0] >= joined])
    assert abs(float(np.median(av_offsets(late, clip, video_fps(clip)))) - median) <= 0.005


async def test_a_half_speed_backend_still_holds_25_fps_by_interpolating(live, tmp_path: Path) -> None:
    clip = shared_media(*CLIP)
    sessions = []
    live.server.trace = TraceWriter(tmp_path / "trace.jsonl")  # what `serve --trace FILE` writes

    async def keep_session() -> None:
        while not sessions:
            sessions.extend(live.server.sessions.values())
            await asyncio.sleep(0.05)

    keeper = asyncio.create_task(keep_session())
    received = await stream_clip(live.url, clip, seconds=5.0, options={"backend": "slow", "avatar": "astronaut", "fps": 25})
    keeper.cancel()
    fps = output_fps(received)
    (session,) = sessions
    counts = session.pipeline.scheduler.counts
    print(f"fps {fps:.2f}, counts {counts}, delay {session.pipeline.scheduler.config.delay_s * 1000:.0f} ms")
    assert 23.0 <= fps <= 27.0, f"output video at {fps:.1f} fps"
    sent = counts.generated + counts.interpolated + counts.repeated
    assert 0.35 <= counts.generated / sent <= 0.65  # about every other frame is generated
    assert counts.interpolated >= 0.6 * (sent - counts.generated)  # most of the rest interpolated
    latency = np.asarray(session.ledger.stats.latency_s)
    # p95 within the delay + 50 ms; the max is allowed one more frame for a busy shared machine
    assert len(latency) > 50 and np.percentile(latency, 95) < session.pipeline.scheduler.config.delay_s + 0.05
    assert latency.max() < session.pipeline.scheduler.config.delay_s + 0.09

    # every generated frame's stages add up to its latency less the lookahead
    live.server.trace.close()
    records = [json.loads(line) for line in (tmp_path / "trace.jsonl").read_text().splitlines()]
    generated = [r for r in records if r["kind"] == "generated" and r["stages_ms"]]
    assert len(records) >= 100 and len(generated) >= 40
    for record in generated:
        stages = record["stages_ms"]
        assert set(stages) == set(STAGES) and min(stages.values()) > -0.1, stages
        assert sum(stages.values()) == pytest.approx(record["latency_ms"] - session.backend.lookahead_s * 1000, abs=0.5)
    backend_ms = np.median([r["stages_ms"]["backend"] for r in generated])
    assert 75 <= backend_ms <= 110, f"the slow backend takes 80 ms a frame, stage says {backend_ms:.1f}"
    stats = session.snapshot()["stages_ms"]
    assert stats["backend"]["p50"] is not None and stats["queue"]["p50"] is not None
