"""Drive a stream on a simulated clock: the offline render (a StreamPipeline) and the
scheduler's tests and benchmarks (a FrameScheduler alone).

Audio "arrives" in chunks at the media time where each chunk ends (plus an optional delay),
the backend is one worker taking jobs in order, each taking a given simulated time, and every
slot is sent at its deadline. Nothing here reads the wall clock, so runs are deterministic.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Callable, Generic, Protocol, Sequence

from stream_server.scheduler import Emission, Frame, FrameScheduler


@dataclass
class SimulatedRun(Generic[Frame]):
    emissions: list[tuple[float, Emission[Frame]]] = field(default_factory=list)
    dispatched: dict[int, float] = field(default_factory=dict)  # slot -> dispatch time
    finished: dict[int, float] = field(default_factory=dict)  # slot -> finish time
    max_queued: int = 0


class Simulated(Protocol[Frame]):
    """What the simulation drives: the calls a live driver makes on its stream."""

    scheduler: FrameScheduler[Frame]

    def due(self, now: float, horizon: float) -> list[int]: ...

    def completed(self, slot: int, frame: Frame, now: float, service_s: float | None) -> None: ...

    def emit(self, slot: int) -> Emission[Frame]: ...


class SchedulerAlone(Generic[Frame]):
    """A scheduler as a simulated stream of its own, for its tests and benchmarks."""

    def __init__(self, scheduler: FrameScheduler[Frame]) -> None:
        self.scheduler = scheduler

    def due(self, now: float, horizon: float) -> list[int]:
        return self.scheduler.poll(now, horizon)

    def completed(self, slot: int, frame: Frame, now: float, service_s: float | None) -> None:
        self.scheduler.completed(slot, frame, now, service_s)

    def emit(self, slot: int) -> Emission[Frame]:
        return self.scheduler.emit(slot)


def simulate(
    stream: Simulated[Frame] | FrameScheduler[Frame],
    duration_s: float,
    generate: Callable[[Sequence[int]], Sequence[Frame]],
    service_s: Callable[[int], float],
    audio_chunk_s: float = 0.02,
    audio_delay_s: Callable[[int], float] = lambda chunk: 0.0,
    audio_end_s: float = math.inf,
    on_chunk: Callable[[int], None] | None = None,
    on_emit: Callable[[float, Emission[Frame]], None] | None = None,
) -> SimulatedRun[Frame]:
    """Run until every slot before ``duration_s`` has been sent.

    ``generate`` makes the frames for the slots handed out (called when a job starts),
    ``service_s(slot)`` says how long the job takes, ``audio_delay_s(chunk)`` how late chunk n
    arrives, and ``audio_end_s`` where the audio ends (after it, everything counts as arrived).
    ``on_chunk(n)`` is called as chunk n arrives, ``on_emit`` as each slot is sent.
    """
    if isinstance(stream, FrameScheduler):
        stream = SchedulerAlone(stream)
    scheduler = stream.scheduler
    run: SimulatedRun[Frame] = SimulatedRun()
    cfg = scheduler.config
    last_slot = math.ceil(duration_s * cfg.fps) - 1
    jobs: list[tuple[float, int, Frame]] = []  # heap of (finish time, slot, frame)
    worker_free = 0.0
    chunk = 0  # chunks arrived so far
    now = 0.0

    def horizon() -> float:
        return math.inf if chunk * audio_chunk_s >= audio_end_s else chunk * audio_chunk_s

    def chunk_arrival(n: int) -> float:
        return (n + 1) * audio_chunk_s + audio_delay_s(n)

    while scheduler.next_emit <= last_slot:
        while jobs and jobs[0][0] <= now + 1e-12:
            finished, slot, frame = heapq.heappop(jobs)
            run.finished[slot] = finished
            stream.completed(slot, frame, finished, service_s(slot))
        while horizon() != math.inf and chunk_arrival(chunk) <= now + 1e-12:
            if on_chunk:
                on_chunk(chunk)
            chunk += 1
        due = [s for s in stream.due(now, horizon()) if s <= last_slot]
        if due:
            for slot, frame in zip(due, generate(due)):
                run.dispatched[slot] = now
                worker_free = max(worker_free, now) + service_s(slot)
                heapq.heappush(jobs, (worker_free, slot, frame))
        run.max_queued = max(run.max_queued, scheduler.queued)
        while scheduler.next_emit <= last_slot and scheduler.deadline(scheduler.next_emit) <= now + 1e-12:
            emission = stream.emit(scheduler.next_emit)
            run.emissions.append((now, emission))
            if on_emit:
                on_emit(now, emission)
        # advance to whatever happens next: a chunk arrives, a job finishes, a slot is due, or
        # the last moment to hand out the next slot without its audio
        candidates = [scheduler.deadline(scheduler.next_emit), scheduler.next_wakeup()]
        if horizon() != math.inf:
            candidates.append(chunk_arrival(chunk))
        if jobs:
            candidates.append(jobs[0][0])
        now = min(c for c in candidates if c > now + 1e-12)
    return run
