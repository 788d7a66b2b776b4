"""The transport-free stream pipeline: jobs, results and failures, on a simulated clock."""

from __future__ import annotations

import numpy as np

from engines.base import BackendError
from engines.passthrough.backend import PassthroughBackend
from stream_server.audio_in import AudioIn
from stream_server.pipeline import Generation, Portrait, StreamPipeline
from stream_server.render import audio_frames
from stream_server.simulate import simulate
from stream_server.worker import BackendHung
from tests.backends import SlowBackend

FPS = 25


def pipeline_for(backend: PassthroughBackend | SlowBackend, events: list[str], failures: list[tuple[str, bool]]) -> StreamPipeline:
    portrait = np.full((64, 48, 3), 200, np.uint8)
    return StreamPipeline(
        "test", Generation(backend, backend.prepare_avatar("grey", portrait)), FPS, 0.0, 0.04, Portrait(portrait),
        AudioIn(), failures_before_fallback=3, on_event=events.append,
        on_failure=lambda reason, hung: failures.append((reason, hung)),
    )


def test_a_simulated_run_sends_every_slot_with_the_audio_each_job_would_see_live() -> None:
    pipeline = pipeline_for(SlowBackend(), [], [])
    tone = (0.3 * np.sin(np.arange(48000) * 2 * np.pi * 220 / 48000)).astype(np.float32)
    chunks = list(audio_frames(tone))
    loudness: dict[int, float] = {}

    def generate(slots: list[int]) -> list[np.ndarray]:
        jobs = [pipeline.job(slot)() for slot in slots]
        for job in jobs:  # the window covers the slot's context and lookahead, cut from the ring
            assert job.audio.pcm.shape == (round((job.audio.before_s + job.audio.after_s) * 16000),)
            loudness[job.slot] = float(np.abs(job.audio.pcm).mean())
        return pipeline.backend.generate(jobs)

    run = simulate(
        pipeline, 1.0, generate=generate, service_s=lambda slot: 0.0, audio_chunk_s=0.02,
        audio_end_s=len(chunks) * 0.02,
        on_chunk=lambda n: pipeline.audio_in.push(chunks[n], arrival=(n + 1) * 0.02),
    )
    assert [emission.slot for _, emission in run.emissions] == list(range(FPS))
    assert pipeline.scheduler.counts.generated == FPS
    # each job saw exactly the audio before its slot: silence before time 0, then the tone
    assert loudness[0] == 0.0
    assert all(level > 0.15 for slot, level in loudness.items() if slot / FPS >= SlowBackend.context_s)
    picture = pipeline.picture(run.emissions[3][1], pipeline.base(3))
    assert picture.shape == (64, 48, 3) and picture[0, 0, 0] == (3 * 8) % 256  # SlowBackend paints its slot


def test_failures_in_a_row_are_reported_once_each_and_a_hang_at_once() -> None:
    events: list[str] = []
    failures: list[tuple[str, bool]] = []
    backend = PassthroughBackend()
    pipeline = pipeline_for(backend, events, failures)
    pipeline.scheduler.start_at(0.0)
    slots = pipeline.due(0.0, horizon=10.0)
    assert slots
    pipeline.failed(slots[0], BackendError("boom"), 0.0, backend)
    pipeline.failed(slots[1], BackendError("boom"), 0.0, backend)
    assert events == ["backend passthrough failed on a frame: boom"] and failures == []
    pipeline.failed(99, BackendError("boom"), 0.0, backend)
    assert failures == [("boom", False)]
    other = PassthroughBackend()
    pipeline.switch(Generation(other, pipeline.avatar))
    pipeline.failed(100, BackendError("late"), 0.0, backend)  # the old backend's job: not counted
    assert len(failures) == 1 and pipeline.scheduler.counts.failed == 4
    pipeline.failed(101, BackendHung("stuck"), 0.0, other)
    assert failures[-1] == ("stuck", True)
