"""One worker thread per loaded backend, shared by every session: batches jobs, off the loop.

Sessions submit a callable that builds the job (so image conversion also happens in the worker
thread) and get an asyncio future of a ``JobResult``: the frame, the backend time per job, and
when the job was picked up, built and finished (for the per-stage timings). Jobs waiting when
the worker becomes free are taken together, up to the backend's preferred batch size, so frames
of different sessions due in the same tick share one ``generate`` call.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from engines.base import Backend, FrameJob, check_frames

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class JobResult:
    frame: np.ndarray
    backend_s: float  # the batch's generate time divided by its jobs (the backend's speed)
    service_s: float  # the worker's whole time per job, building included (what a job costs)
    picked: float  # wall times (monotonic): the worker took the batch off the queue,
    built: float  # built its jobs and called generate,
    finished: float  # and generate returned


@dataclass
class _Pending:
    build: Callable[[], FrameJob]
    future: asyncio.Future[JobResult]
    loop: asyncio.AbstractEventLoop


def _settle(future: asyncio.Future[JobResult], result: JobResult | None, error: BaseException | None) -> None:
    if future.done():
        return  # the session went away and cancelled it
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]


class BackendWorker:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"backend-{backend.name}", daemon=True)
        self._thread.start()

    def submit(self, build: Callable[[], FrameJob]) -> asyncio.Future[JobResult]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[JobResult] = loop.create_future()
        self._queue.put(_Pending(build, future, loop))
        return future

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.backend.batch_size:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(more)
            self._process(batch)

    def _process(self, batch: list[_Pending]) -> None:
        picked = time.monotonic()
        jobs: list[FrameJob] = []
        ready: list[_Pending] = []
        for pending in batch:
            if pending.future.cancelled():
                continue
            try:
                jobs.append(pending.build())
                ready.append(pending)
            except Exception as exc:
                log.exception("building a frame job failed")
                pending.loop.call_soon_threadsafe(_settle, pending.future, None, exc)
        if not jobs:
            return
        built = time.monotonic()
        try:
            frames = self.backend.generate(jobs)
            check_frames(jobs, frames)
        except Exception as exc:
            log.exception("backend %s failed on a batch of %d", self.backend.name, len(jobs))
            for pending in ready:
                pending.loop.call_soon_threadsafe(_settle, pending.future, None, exc)
            return
        finished = time.monotonic()
        per_job, service = (finished - built) / len(jobs), (finished - picked) / len(jobs)
        for pending, frame in zip(ready, frames):
            result = JobResult(frame, per_job, service, picked, built, finished)
            pending.loop.call_soon_threadsafe(_settle, pending.future, result, None)
