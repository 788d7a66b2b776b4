"""Scheduler policies on a simulated clock with a fake backend of configurable speed."""

from __future__ import annotations

import pytest

from stream_server.scheduler import FrameKind, FrameScheduler, SchedulerConfig, budget_for
from stream_server.simulate import simulate

FPS = 25.0
INTERVAL = 1.0 / FPS


def run_at_speed(speed: float, seconds: float = 20.0, lookahead: float = 0.0, **kwargs):
    """Simulate a backend running at ``speed`` x real time (1.0: one frame per frame interval)."""
    service = INTERVAL / speed
    config = SchedulerConfig(fps=FPS, lookahead_s=lookahead, budget_s=budget_for(service, FPS))
    scheduler: FrameScheduler[int] = FrameScheduler(config, backend_s=service)
    run = simulate(
        scheduler,
        seconds,
        generate=lambda slots: list(slots),  # a "frame" is the slot it was generated for
        service_s=kwargs.pop("service_s", lambda slot: service),
        **kwargs,
    )
    return scheduler, run


def kinds(run) -> dict[FrameKind, int]:
    out = {kind: 0 for kind in FrameKind}
    for _, emission in run.emissions:
        out[emission.kind] += 1
    return out


@pytest.mark.parametrize("speed", [0.5, 1.0, 2.0])
def test_every_slot_is_sent_exactly_at_its_deadline(speed: float) -> None:
    scheduler, run = run_at_speed(speed)
    slots = [emission.slot for _, emission in run.emissions]
    assert slots == list(range(len(slots))) and len(slots) == 500  # 20 s at 25 fps, none missing
    for sent, emission in run.emissions:
        assert sent == pytest.approx(scheduler.deadline(emission.slot))  # fps held, latency flat


@pytest.mark.parametrize("speed", [1.0, 2.0])
def test_a_backend_at_least_real_time_generates_every_frame(speed: float) -> None:
    scheduler, run = run_at_speed(speed)
    assert kinds(run)[FrameKind.GENERATED] == 500
    assert scheduler.counts.dropped == 0 and scheduler.counts.repeated == 0


def test_a_half_speed_backend_is_filled_by_interpolation() -> None:
    scheduler, run = run_at_speed(0.5)
    counts = kinds(run)
    assert 230 <= counts[FrameKind.GENERATED] <= 270  # about every other slot
    assert counts[FrameKind.INTERPOLATED] >= 230
    assert counts[FrameKind.REPEATED] <= 2  # only before the first frame exists
    filled = counts[FrameKind.INTERPOLATED] + counts[FrameKind.REPEATED]
    assert filled <= scheduler.counts.dropped <= filled + 1  # + the slot after the run's end
    for _, emission in run.emissions:
        if emission.kind is FrameKind.INTERPOLATED:
            before, after = emission.sources
            assert before < emission.slot < after and emission.frames == (before, after)
            assert emission.weight == pytest.approx((emission.slot - before) / (after - before))


@pytest.mark.parametrize("speed", [0.5, 1.0, 2.0])
def test_nothing_is_rendered_late_and_no_queue_grows(speed: float) -> None:
    scheduler, run = run_at_speed(speed)
    for _, emission in run.emissions:
        if emission.kind is FrameKind.GENERATED:
            assert run.finished[emission.slot] <= scheduler.deadline(emission.slot) + 1e-9
    assert run.max_queued <= 2
    # every generated frame used audio that had arrived: dispatched at or after its slot time
    for slot, dispatched in run.dispatched.items():
        assert dispatched >= scheduler.slot_time(slot) - 1e-9


def test_the_delay_is_the_lookahead_plus_the_budget_and_stays_flat() -> None:
    scheduler, run = run_at_speed(2.0, lookahead=0.08)
    delays = [sent - scheduler.slot_time(e.slot) for sent, e in run.emissions]
    assert max(delays) - min(delays) < 1e-9
    assert delays[0] == pytest.approx(0.08 + budget_for(INTERVAL / 2, FPS))
    # nothing is handed out before the lookahead audio is in
    for slot, dispatched in run.dispatched.items():
        assert dispatched >= scheduler.slot_time(slot) + 0.08 - 1e-9


def test_stalls_drop_slots_instead_of_delaying_later_ones() -> None:
    stalls = {100: 0.6, 300: 1.5}  # the backend hangs for 0.6 s and 1.5 s on these slots
    scheduler, run = run_at_speed(2.0, service_s=lambda slot: stalls.get(slot, INTERVAL / 2))
    counts = kinds(run)
    assert counts[FrameKind.REPEATED] >= 40  # the stalls are bridged by the last good frame
    assert scheduler.counts.dropped >= 40
    # right after each stall, frames are generated again with the same latency as before
    generated_after = [e.slot for _, e in run.emissions if e.kind is FrameKind.GENERATED and e.slot > 345]
    assert len(generated_after) >= 140
    for sent, emission in run.emissions:
        assert sent == pytest.approx(scheduler.deadline(emission.slot))


def test_late_or_lost_audio_does_not_stop_the_video() -> None:
    # chunks 50..99 (1 s to 2 s) arrive 0.5 s late: those slots go out on time, treating the
    # missing audio as silence, instead of waiting for it
    late = lambda chunk: 0.5 if 50 <= chunk < 100 else 0.0  # noqa: E731
    scheduler, run = run_at_speed(2.0, seconds=4.0, audio_delay_s=late)
    assert kinds(run)[FrameKind.GENERATED] == 100
    for sent, emission in run.emissions:
        assert sent == pytest.approx(scheduler.deadline(emission.slot))


def test_a_fast_backend_is_not_polled_in_a_busy_loop() -> None:
    polls = 0
    scheduler, _ = run_at_speed(2.0, seconds=10.0)

    class Counting(FrameScheduler[int]):
        def poll(self, now: float, audio_horizon: float) -> list[int]:
            nonlocal polls
            polls += 1
            return super().poll(now, audio_horizon)

    config = scheduler.config
    counting: Counting = Counting(config, backend_s=INTERVAL / 2)
    simulate(counting, 10.0, generate=lambda s: list(s), service_s=lambda s: INTERVAL / 2)
    # one wake-up per audio chunk, job completion and deadline: a handful per frame, never more
    assert polls <= 250 * 5


def test_starting_late_skips_to_the_first_slot_that_can_make_it() -> None:
    config = SchedulerConfig(fps=FPS, budget_s=0.06)
    scheduler: FrameScheduler[int] = FrameScheduler(config, backend_s=0.02)
    scheduler.start_at(1.0)  # the session's first frames were due a second ago
    assert scheduler.deadline(scheduler.next_emit) >= 1.0 + 0.02
    assert scheduler.deadline(scheduler.next_emit - 1) < 1.0 + 0.02


def test_a_job_still_out_at_its_deadline_is_withdrawn_and_frees_its_place() -> None:
    scheduler: FrameScheduler[int] = FrameScheduler(SchedulerConfig(fps=FPS, budget_s=0.06), backend_s=0.01)
    scheduler.start_at(0.0)
    assert scheduler.poll(0.0, audio_horizon=1.0) == [0, 1]  # two in flight: the queue is full
    assert scheduler.poll(0.01, audio_horizon=1.0) == []
    assert scheduler.emit(0).kind is FrameKind.REPEATED  # slot 0's deadline came without its frame
    scheduler.abandon(0)
    assert scheduler.in_flight == {1} and scheduler.counts.dropped == 1
    assert scheduler.poll(0.07, audio_horizon=1.0) == [2]  # its place is free again


def test_after_a_result_the_jobs_still_out_are_planned_from_now() -> None:
    """Jobs that take longer than estimated must not leave the plan behind reality: after a
    result, the next hand-out is planned behind the jobs still out, counted from that result."""
    scheduler: FrameScheduler[int] = FrameScheduler(SchedulerConfig(fps=FPS, budget_s=0.5), backend_s=0.02)
    scheduler.start_at(0.0)
    assert scheduler.poll(0.0, audio_horizon=1.0) == [0, 1]  # planned to be done by 0.04
    scheduler.completed(0, 0, now=0.1)  # the first one took 0.1 s, five times the estimate
    scheduler.emit(0)
    # slot 1 is still out after 0.1, so slot 2 is planned to be done by 0.1 + 2 x 0.02, not 0.06
    assert scheduler.poll(0.1, audio_horizon=1.0) == [2]
    assert scheduler._busy_until == pytest.approx(0.1 + 2 * 0.02)
