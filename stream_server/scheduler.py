"""The frame scheduler: which output slots to generate, and what to send at each slot's deadline.

One scheduler per session, on one media clock shared by both outgoing tracks. Output slot ``k``
stands for media time ``t_k = k / fps``. It is handed to the backend once the audio up to
``t_k + lookahead`` has arrived (or, if that audio is late or lost, at the last moment that can
still make the deadline, with the missing audio as silence), and it is sent at its deadline
``t_k + delay`` whatever happened: the generated frame if it is ready, else a blend of the
generated frames either side of it, else the last generated frame again.

The delay is fixed for the session, so latency cannot creep, and the outgoing audio is delayed by
exactly the same amount. A slot that can no longer be generated in time is dropped, never
rendered late, and at most ``max_in_flight`` frames are ever queued (at the backend, or generated
and waiting for their deadline).

This class is pure bookkeeping over media time: the live session drives it with the wall clock,
the offline render and the tests with a simulated one.
"""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Frame = TypeVar("Frame")

MIN_BUDGET_S = 0.04  # hand-offs, thread wake-ups and audio jitter, even for an instant backend
MARGIN_S = 0.02  # slack over the backend's measured time
LAST_CALL_S = 0.015  # thread hand-offs: a job waiting for late audio starts at least this early


class FrameKind(str, enum.Enum):
    GENERATED = "generated"
    INTERPOLATED = "interpolated"
    REPEATED = "repeated"


@dataclass(frozen=True)
class SchedulerConfig:
    fps: float = 25.0
    lookahead_s: float = 0.0  # future audio the backend needs
    budget_s: float = 0.06  # time allowed for the backend after that audio has arrived
    max_in_flight: int = 2
    interpolate: bool = True

    @property
    def delay_s(self) -> float:
        """Media time between a slot's instant and its send time; the outgoing audio's delay too."""
        return self.lookahead_s + self.budget_s

    @property
    def interval_s(self) -> float:
        return 1.0 / self.fps


def budget_for(backend_s: float, fps: float, min_budget_s: float = MIN_BUDGET_S) -> float:
    """The processing budget for a backend taking ``backend_s`` per frame.

    A backend slower than real time generates only some slots; one more frame interval lets the
    next generated frame be ready before the gap before it is sent, so gaps are interpolated
    instead of repeated.
    """
    budget = max(min_budget_s, backend_s + MARGIN_S)
    if backend_s > 1.0 / fps:
        budget += 1.0 / fps
    return budget


@dataclass(frozen=True)
class Emission(Generic[Frame]):
    """What to send for one slot. ``frames`` are the generated frames to show (one, or two to
    blend with ``weight`` on the second); empty means nothing was generated yet (send the base
    frame)."""

    slot: int
    kind: FrameKind
    frames: tuple[Frame, ...] = ()
    weight: float = 0.0
    sources: tuple[int, ...] = ()


@dataclass
class Counts:
    generated: int = 0
    interpolated: int = 0
    repeated: int = 0
    dropped: int = 0  # slots not generated in time: skipped before generation, or whose frame came late
    failed: int = 0  # jobs the backend raised on
    unsent: int = 0  # slots the sender skipped because sending fell behind (an overloaded process)

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class FrameScheduler(Generic[Frame]):
    """Which slots to generate and what to send at each deadline (the rules are in the module doc)."""

    config: SchedulerConfig
    backend_s: float  # initial estimate of the backend's time per job
    counts: Counts = field(default_factory=Counts)

    def __post_init__(self) -> None:
        self.next_slot = 0  # the next slot to consider for dispatch
        self.next_emit = 0  # the next slot to send
        self.in_flight: set[int] = set()
        self._busy_until = float("-inf")  # predicted finish of the last job handed out
        self._ready: dict[int, Frame] = {}  # generated frames not yet superseded
        self._ready_slots: list[int] = []  # sorted keys of _ready

    # -- clock -----------------------------------------------------------------------------
    def slot_time(self, slot: int) -> float:
        return slot / self.config.fps

    def deadline(self, slot: int) -> float:
        """Media time at which ``slot`` is sent."""
        return self.slot_time(slot) + self.config.delay_s

    def start_at(self, now: float) -> None:
        """Begin with the first slot that can still be generated in time from ``now``."""
        slot = 0
        while self.deadline(slot) < now + self.backend_s:
            slot += 1
        self.next_slot = self.next_emit = slot

    # -- dispatch --------------------------------------------------------------------------
    def finish_by(self, slot: int) -> float:
        """When a job for ``slot`` must be done. A backend slower than real time must finish a
        frame interval early, so that the gap before the slot can be interpolated towards it."""
        slow = self.config.interpolate and self.backend_s > self.config.interval_s
        return self.deadline(slot) - (self.config.interval_s if slow else 0.0)

    def _last_call(self, slot: int) -> float:
        """The latest time a job for ``slot`` can start and still be done in time."""
        return self.finish_by(slot) - self.backend_s - LAST_CALL_S

    def poll(self, now: float, audio_horizon: float) -> list[int]:
        """Slots to hand to the backend now. Skips (drops) slots that can no longer be in time."""
        due: list[int] = []
        cfg = self.config
        while True:
            slot = max(self.next_slot, self.next_emit)
            self.next_slot = slot
            audio_in = audio_horizon >= self.slot_time(slot) + cfg.lookahead_s - 1e-9
            if not audio_in and now < self._last_call(slot) - 1e-9:
                break  # wait for its audio
            finish = max(now, self._busy_until) + self.backend_s
            if finish > self.finish_by(slot) + 1e-9:
                self.counts.dropped += 1  # cannot be ready in time: never render late
                self.next_slot += 1
                continue
            if self.queued >= cfg.max_in_flight:
                break  # enough frames waiting; this slot may still make it, or be dropped later
            self.in_flight.add(slot)
            self._busy_until = finish
            self.next_slot += 1
            due.append(slot)
        return due

    def next_wakeup(self) -> float:
        """When polling again makes sense even if no audio or result arrives before then."""
        return self._last_call(max(self.next_slot, self.next_emit))

    def completed(self, slot: int, frame: Frame, now: float, backend_s: float | None = None) -> bool:
        """Record a generated frame; returns False (and counts a drop) if it came too late."""
        self.in_flight.discard(slot)
        if backend_s is not None:  # follow the backend's speed (exponential average)
            self.backend_s = 0.8 * self.backend_s + 0.2 * backend_s
        self._replan(now)
        if slot < self.next_emit:
            self.counts.dropped += 1
            return False
        self._ready[slot] = frame
        bisect.insort(self._ready_slots, slot)
        return True

    def abandon(self, slot: int) -> None:
        """A slot still at the backend when its deadline came: its frame will not be used, so
        the job is withdrawn (if not yet started) and the slot counts as dropped."""
        if slot in self.in_flight:
            self.in_flight.discard(slot)
            self.counts.dropped += 1

    def expired(self, slot: int, now: float) -> None:
        """The worker gave the job up unrun: it could not be done by ``finish_by`` (the backend
        is shared and busy with other sessions' frames). Counted as dropped."""
        self.in_flight.discard(slot)
        self._replan(now)
        self.counts.dropped += 1

    def failed(self, slot: int, now: float) -> None:
        """The backend raised on this slot: it will be filled like a dropped one."""
        self.in_flight.discard(slot)
        self._replan(now)
        self.counts.failed += 1

    def _replan(self, now: float) -> None:
        """Re-anchor the predicted end of the backend's work on a result that just came: the
        jobs still out run after it. Predictions chained from hand-out times alone drift late
        when jobs take a little longer than estimated, and then every frame comes too late."""
        self._busy_until = now + len(self.in_flight) * self.backend_s

    # -- emission --------------------------------------------------------------------------
    def emit(self, slot: int) -> Emission[Frame]:
        """What to send for ``slot`` (called at its deadline, slots in increasing order)."""
        skipped = slot - self.next_emit  # the sender fell behind and skipped slots
        if skipped > 0:
            self.counts.unsent += skipped  # not "dropped": most were already counted there
        self.next_emit = slot + 1
        position = bisect.bisect_left(self._ready_slots, slot)
        if position < len(self._ready_slots) and self._ready_slots[position] == slot:
            emission = Emission(slot, FrameKind.GENERATED, (self._ready[slot],), sources=(slot,))
            self.counts.generated += 1
        elif position > 0:
            before = self._ready_slots[position - 1]
            after = self._ready_slots[position] if position < len(self._ready_slots) else None
            if after is not None and self.config.interpolate:
                weight = (slot - before) / (after - before)
                frames = (self._ready[before], self._ready[after])
                emission = Emission(slot, FrameKind.INTERPOLATED, frames, weight, (before, after))
                self.counts.interpolated += 1
            else:
                emission = Emission(slot, FrameKind.REPEATED, (self._ready[before],), sources=(before,))
                self.counts.repeated += 1
        else:
            emission = Emission(slot, FrameKind.REPEATED)
            self.counts.repeated += 1
        self._forget_before(emission.sources[0] if emission.sources else slot)
        return emission

    def _forget_before(self, slot: int) -> None:
        """Drop generated frames older than ``slot``: nothing sent later can need them."""
        cut = bisect.bisect_left(self._ready_slots, slot)
        for old in self._ready_slots[:cut]:
            del self._ready[old]
        del self._ready_slots[:cut]

    @property
    def queued(self) -> int:
        """Frames waiting: jobs at the backend plus generated frames not yet sent."""
        return len(self.in_flight) + sum(1 for s in self._ready_slots if s >= self.next_emit)
