"""The shared backend worker: batching across sessions, and errors reported per job."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from engines.base import AudioWindow, BackendError, FrameJob
from stream_server.worker import BackendWorker, FrameExpired
from tests.backends import BatchingBackend, BrokenBackend, SlowStartBackend

WINDOW = AudioWindow(0.0, 0.2, 0.0, np.zeros(3200, np.float32), np.zeros((20, 80), np.float32))


def job(stream: str, slot: int) -> FrameJob:
    backend = BatchingBackend()
    return FrameJob(stream, slot, slot / 25, WINDOW, np.zeros((32, 32, 3), np.uint8), backend.prepare_avatar("a", None))


async def test_jobs_waiting_together_share_one_generate_call() -> None:
    BatchingBackend.batches.clear()
    worker = BackendWorker(BatchingBackend())
    try:
        # eight jobs from two sessions arrive while the worker is busy: batches of up to four
        futures = [worker.submit(lambda s=s, k=k: job(s, k)) for k in range(4) for s in ("a", "b")]
        results = await asyncio.gather(*futures)
    finally:
        worker.stop()
    assert sum(BatchingBackend.batches) == 8 and max(BatchingBackend.batches) == 4
    assert len(BatchingBackend.batches) <= 4
    for result, k in zip(results, [k for k in range(4) for _ in "ab"]):
        assert result.frame.shape == (32, 32, 3) and result.frame[0, 0, 0] == k * 8 and result.backend_s > 0
        assert result.picked <= result.built < result.finished


@pytest.mark.parametrize(("mode", "message"), [("raise", "model exploded"), ("shape", "expected (32, 32, 3)")])
async def test_a_failing_backend_fails_its_jobs_not_the_worker(mode: str, message: str) -> None:
    backend = BrokenBackend()
    backend.mode = mode
    worker = BackendWorker(backend)
    try:
        with pytest.raises((RuntimeError, BackendError), match=message.replace("(", r"\(").replace(")", r"\)")):
            await worker.submit(lambda: job("a", 0))
        backend.mode = "fixed"  # the worker thread is still there for the next job
        with pytest.raises(BackendError):
            await worker.submit(lambda: job("a", 1))
    finally:
        worker.stop()


async def test_when_sessions_ask_more_than_the_backend_can_do_the_frames_that_can_be_on_time_are() -> None:
    """Jobs are taken by when they are due, and one that can no longer be done in time fails at
    once with FrameExpired instead of making every frame behind it late too."""
    BatchingBackend.batches.clear()
    worker = BackendWorker(BatchingBackend())  # 10 ms per job, 4 per batch
    try:
        await worker.submit(lambda: job("warm", 0))  # the worker learns its time per job
        now = time.monotonic()
        # due in the reverse order of submission; two are already past due
        dues = [now + 0.5, now + 0.3, now + 0.1, now - 0.01, now - 0.02]
        futures = [worker.submit(lambda k=k: job("a", k), due=due) for k, due in enumerate(dues)]
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
    finally:
        worker.stop()
    assert [type(o).__name__ for o in outcomes[3:]] == ["FrameExpired", "FrameExpired"]
    done = outcomes[:3]
    assert all(not isinstance(o, BaseException) for o in done)
    # the one due first finished first
    assert done[2].finished <= done[1].finished <= done[0].finished
    assert all(o.finished <= due for o, due in zip(done, dues))


async def test_one_slow_first_call_does_not_make_every_later_frame_expire() -> None:
    """A slow first call (a tracker starting) must not leave the worker's time per job so high
    that no later job ever looks feasible: jobs given up on the estimate alone lower it."""
    SlowStartBackend.calls = 0
    worker = BackendWorker(SlowStartBackend())
    try:
        await worker.submit(lambda: job("a", 0), due=time.monotonic() + 5.0)
        assert worker.job_s >= 0.5
        done = 0
        for k in range(1, 40):  # a session keeps asking, as the scheduler does
            try:
                await worker.submit(lambda k=k: job("a", k), due=time.monotonic() + 0.2)
                done += 1
            except FrameExpired:
                assert done == 0, "once the estimate is right, jobs due in 0.2 s are run"
    finally:
        worker.stop()
    assert done >= 20 and worker.job_s < 0.1
