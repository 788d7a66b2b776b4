"""One worker thread per loaded backend, shared by every session: batches jobs, off the loop.

Sessions submit a callable that builds the job (so image conversion also happens in the worker
thread) and get an asyncio future of a ``JobResult``: the frame, the backend time per job, and
when the job was picked up, built and finished (for the per-stage timings). Jobs waiting when
the worker becomes free are taken together, up to the backend's preferred batch size, so frames
of different sessions due in the same tick share one ``generate`` call.

A backend that hangs cannot be interrupted (Python cannot stop a thread), so the worker says how
long its current batch has been running (``busy_s``); the server's watchdog then calls
``abandon``: every job waiting or running fails with :class:`BackendHung` at once, the thread is
left to finish (or not) on its own, and whatever it returns later is discarded.
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

from engines.base import Backend, BackendError, FrameJob, check_frames

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class JobResult:
    frame: np.ndarray
    backend_s: float  # the batch's generate time divided by its jobs (the backend's speed)
    service_s: float  # the worker's whole time per job, building included (what a job costs)
    picked: float  # wall times (monotonic): the worker took the batch off the queue,
    built: float  # built its jobs and called generate,
    finished: float  # and generate returned


class BackendHung(BackendError):
    """The backend's generate() ran past the watchdog's limit; its jobs were given up."""


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


def _post(pending: _Pending, result: JobResult | None, error: BaseException | None) -> None:
    """Settle a job's future from the worker thread (its loop may be gone after an abandon)."""
    try:
        pending.loop.call_soon_threadsafe(_settle, pending.future, result, error)
    except RuntimeError:
        pass  # the loop is closed: nobody is waiting any more


class BackendWorker:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._busy_since: float | None = None  # monotonic time when the running batch started
        self._running: list[_Pending] = []
        self.abandoned: str = ""  # why the worker was given up (empty while it is in service)
        self._thread = threading.Thread(target=self._run, name=f"backend-{backend.name}", daemon=True)
        self._thread.start()

    def submit(self, build: Callable[[], FrameJob]) -> asyncio.Future[JobResult]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[JobResult] = loop.create_future()
        if self.abandoned:
            future.set_exception(BackendHung(self.abandoned))
        else:
            self._queue.put(_Pending(build, future, loop))
        return future

    def busy_s(self) -> float:
        """How long the batch now in generate() has been running (0 when idle)."""
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    def abandon(self, reason: str) -> None:
        """Fail every waiting and running job with BackendHung and take no more (loop thread)."""
        self.abandoned = reason
        pending = list(self._running)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                pending.append(item)
        self._queue.put(None)  # should the thread ever come back, it exits
        for item in pending:
            _settle(item.future, None, BackendHung(reason))

    def stop(self) -> None:
        self._queue.put(None)
        if not self.abandoned:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None or self.abandoned:
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
            first = more = batch = None  # type: ignore[assignment]  # hold no session's job (nor its buffers) while waiting

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
                _post(pending, None, exc)
        if not jobs:
            return
        built = time.monotonic()
        self._running, self._busy_since = ready, built
        try:
            frames = self.backend.generate(jobs)
            check_frames(jobs, frames)
        except Exception as exc:
            log.exception("backend %s failed on a batch of %d", self.backend.name, len(jobs))
            for pending in ready:
                _post(pending, None, exc)
            return
        finally:
            self._running, self._busy_since = [], None
        finished = time.monotonic()
        per_job, service = (finished - built) / len(jobs), (finished - picked) / len(jobs)
        for pending, frame in zip(ready, frames):
            _post(pending, JobResult(frame, per_job, service, picked, built, finished), None)
