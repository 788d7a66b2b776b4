"""One worker thread per loaded backend, shared by every session: batches jobs, off the loop.

Sessions submit a callable that builds the job (so image conversion also happens in the worker
thread) and get an asyncio future of a ``JobResult``: the frame, the backend time per job, and
when the job was picked up, built and finished (for the per-stage timings). Jobs waiting when
the worker becomes free are taken together, up to the backend's preferred batch size, so frames
of different sessions due in the same tick share one ``generate`` call.

Each job says by when its frame is needed. The worker takes the jobs due first, and a job that
can no longer be done by then fails at once with :class:`FrameExpired` instead of being run:
when several sessions ask for more than the backend can do, serving the queue in order would
make every frame late (each waits behind the others' until its slot has been sent), and no
session would get a single generated frame; this way the frames that can be on time are.

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

ESTIMATE_DECAY = 0.9  # per job given up on the time-per-job estimate alone


@dataclass(frozen=True)
class JobResult:
    frame: np.ndarray
    backend_s: float  # the batch's generate time divided by its jobs (the backend's speed)
    service_s: float  # the worker's whole time per job, building included (what a job costs)
    picked: float  # wall times (monotonic): the worker took the batch off the queue,
    built: float  # built its jobs and called generate,
    finished: float  # and generate returned


class FrameExpired(Exception):
    """The job's frame could no longer be ready by when it was needed; it was not run."""


class BackendHung(BackendError):
    """The backend's generate() ran past the watchdog's limit; its jobs were given up."""


@dataclass
class _Pending:
    build: Callable[[], FrameJob]
    future: asyncio.Future[JobResult]
    loop: asyncio.AbstractEventLoop
    due: float  # monotonic time by which the frame is needed


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
    """The thread that runs one loaded backend for every session, in deadline-ordered batches."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._busy_since: float | None = None  # monotonic time when the running batch started
        self._running: list[_Pending] = []
        self._backlog: list[_Pending] = []  # taken off the queue, not yet run (worker thread only)
        self.job_s = 0.0  # the worker's time per job, building included (moving average)
        self.abandoned: str = ""  # why the worker was given up (empty while it is in service)
        self._thread = threading.Thread(target=self._run, name=f"backend-{backend.name}", daemon=True)
        self._thread.start()

    def submit(self, build: Callable[[], FrameJob], due: float = float("inf")) -> asyncio.Future[JobResult]:
        """Queue a job whose frame is needed by monotonic time ``due``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[JobResult] = loop.create_future()
        if self.abandoned:
            future.set_exception(BackendHung(self.abandoned))
        else:
            self._queue.put(_Pending(build, future, loop, due))
        return future

    def busy_s(self) -> float:
        """How long the batch now in generate() has been running (0 when idle)."""
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    def abandon(self, reason: str) -> None:
        """Fail every waiting and running job with BackendHung and take no more (loop thread)."""
        self.abandoned = reason
        pending = list(self._running) + list(self._backlog)
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
            if not self._backlog and not self._wait_for_job():
                return
            stopping = self._drain_queue()
            if self.abandoned:
                return
            self._process(self._take_batch())  # no local keeps a job (nor its session) while waiting
            if stopping:
                return

    def _wait_for_job(self) -> bool:
        """Block until a job comes and put it in the backlog; False if told to stop."""
        item = self._queue.get()
        if item is None:
            return False
        self._backlog.append(item)
        return True

    def _drain_queue(self) -> bool:
        """Move every queued job to the backlog; True if a stop was queued."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is None:
                return True
            self._backlog.append(item)

    def _take_batch(self) -> list[_Pending]:
        """The jobs due first, up to the batch size, that can still be done in time; those that
        cannot fail with FrameExpired, the rest wait for the next round."""
        now = time.monotonic()
        waiting = sorted((p for p in self._backlog if not p.future.cancelled()), key=lambda p: p.due)
        batch: list[_Pending] = []
        kept: list[_Pending] = []
        for pending in waiting:
            if pending.due < now + self.job_s:
                _post(pending, None, FrameExpired("the frame could not be ready by its deadline"))
                if pending.due >= now:
                    # given up on the estimate alone, which only a job run can correct: let it
                    # sink, or one slow call (a tracker starting) would make every job hopeless
                    self.job_s *= ESTIMATE_DECAY
            elif len(batch) < self.backend.batch_size and pending.due >= now + (len(batch) + 1) * self.job_s:
                batch.append(pending)
            else:
                kept.append(pending)
        self._backlog = kept
        return batch

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
        self.job_s = service if self.job_s == 0.0 else 0.8 * self.job_s + 0.2 * service
        for pending, frame in zip(ready, frames):
            _post(pending, JobResult(frame, per_job, service, picked, built, finished), None)
