"""One stream on the media clock, with no transport: audio in, base frames, the scheduler, jobs
for the backend and their results, and the picture and sound to send for each slot.

``StreamPipeline`` is the part every stream shares, over media times its driver passes in: the
offline render drives it on a simulated clock (stream_server/render.py), and ``LivePipeline``
drives it on the wall clock for live sessions and channel producers, handing jobs to the
backend's shared worker and answering the outgoing tracks' requests for each slot's frame and
for the delayed audio. Neither knows of WebRTC; they report what the user should hear about
(``on_event``) and a backend that keeps failing (``on_failure``) through callbacks, and the
session, which owns the peer connection, decides what to do.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Protocol

import av
import cv2
import numpy as np

from engines.base import Avatar, Backend, Expression, FrameJob
from engines.images import fit_cover
from stream_server.audio_in import PLAYBACK_RATE, AudioIn
from stream_server.camera_in import CameraFrames, CameraIn
from stream_server.clock import MediaClock
from stream_server.frames import emission_image
from stream_server.ledger import FrameLedger
from stream_server.options import CAMERA_SIZE, camera_size
from stream_server.scheduler import Emission, FrameScheduler, SchedulerConfig, budget_for
from stream_server.worker import BackendHung, BackendWorker, FrameExpired, JobResult

log = logging.getLogger(__name__)

VIDEO_TIME_BASE = Fraction(1, 90000)
AUDIO_CHUNK = 960  # 20 ms at 48 kHz
AUDIO_TIME_BASE = Fraction(1, PLAYBACK_RATE)
AUDIO_WAIT_S = 3.0  # how long to wait for the first audio before running the clock without it

MakeFrame = Callable[[], np.ndarray]


class BaseFrames(Protocol):
    """Where the frames to animate come from: a portrait, the live camera, a video file."""

    def pick(self, time_s: float) -> MakeFrame:
        """Choose the frame that shows media time ``time_s`` (on the driver's thread); the
        function returned makes it, RGB at the output size, in any thread."""
        ...


class Portrait:
    """Base frames of a still picture, already at the output size."""

    def __init__(self, image: np.ndarray) -> None:
        self.image = image

    def pick(self, time_s: float) -> MakeFrame:
        return lambda: self.image


@dataclass(frozen=True)
class Generation:
    """What generates a stream's frames; replaced as a whole when the stream falls back."""

    backend: Backend
    avatar: Avatar
    worker: BackendWorker | None = None  # the live path's shared worker (render runs the backend itself)


def expected_backend_s(typical_fps: float | None, fps: float) -> float:
    """A backend's time per frame before the stream has measured it: what its calibration found,
    else one frame interval."""
    return 1.0 / (typical_fps or fps)


def _ignore(*_: object) -> None:
    pass


class StreamPipeline:
    """The shared core of a stream: pure bookkeeping over the media times its driver passes in."""

    def __init__(
        self,
        stream_id: str,
        generation: Generation,
        fps: float,
        backend_s: float,
        min_budget_s: float,
        frames: BaseFrames,
        audio_in: AudioIn,
        failures_before_fallback: int = 3,
        on_event: Callable[[str], None] = _ignore,
        on_failure: Callable[[str, bool], None] = _ignore,
        expression: Expression = Expression(),
    ) -> None:
        self.stream_id = stream_id
        self.generation = generation
        self.expression = expression  # the stream's, put in each of its jobs
        backend = generation.backend
        config = SchedulerConfig(fps=fps, lookahead_s=backend.lookahead_s, budget_s=budget_for(backend_s, fps, min_budget_s))
        self.scheduler: FrameScheduler[np.ndarray] = FrameScheduler(config, backend_s=backend_s)
        self.frames = frames
        self.audio_in = audio_in
        self.failures_before_fallback = failures_before_fallback
        self.on_event, self.on_failure = on_event, on_failure
        self._failures_in_row = 0

    @property
    def backend(self) -> Backend:
        return self.generation.backend

    @property
    def avatar(self) -> Avatar:
        return self.generation.avatar

    def switch(self, generation: Generation) -> None:
        """Go on with another backend (a fallback); jobs of the old one still out are counted
        as failed when they return, without counting against the new one."""
        self.generation = generation
        self._failures_in_row = 0

    # -- generation ------------------------------------------------------------------------
    def due(self, now: float, horizon: float | None = None) -> list[int]:
        """The slots to hand to the backend at media time ``now``, with the audio arrived up to
        ``horizon`` (by default ``input_horizon``)."""
        return self.scheduler.poll(now, self.input_horizon() if horizon is None else horizon)

    def input_horizon(self) -> float:
        """How far the inputs a slot needs have arrived, as audio time: what the audio intake holds."""
        return self.audio_in.horizon_s if self.audio_in.started else -math.inf

    def job(self, slot: int) -> Callable[[], FrameJob]:
        """The job for a slot: its audio window is cut and its base frame chosen now; the
        function returned builds the job (base frame conversion included) in any thread."""
        time_s = self.scheduler.slot_time(slot)
        backend, avatar = self.backend, self.avatar
        audio = self.audio_in.window(time_s, backend.context_s, backend.lookahead_s)
        base, expression = self.frames.pick(time_s), self.expression
        return lambda: FrameJob(self.stream_id, slot, time_s, audio, base(), avatar, expression)

    def completed(self, slot: int, frame: np.ndarray, now: float, service_s: float | None) -> None:
        self._failures_in_row = 0
        # the scheduler plans with what a job really costs the worker, building included
        self.scheduler.completed(slot, frame, now, service_s)

    def expired(self, slot: int, now: float) -> None:
        self.scheduler.expired(slot, now)

    def failed(self, slot: int, error: BaseException, now: float, backend: Backend) -> None:
        """A job of ``backend`` raised. Failures in a row (or a hang) of the stream's current
        backend are reported through ``on_failure``; the stream goes on meanwhile."""
        self.scheduler.failed(slot, now)
        if backend is not self.backend:
            return  # a job of the backend this stream has already left
        self._failures_in_row += 1
        if self._failures_in_row == 1:
            self.on_event(f"backend {backend.name} failed on a frame: {error}")
        hung = isinstance(error, BackendHung)
        if hung or self._failures_in_row >= self.failures_before_fallback:
            self.on_failure(str(error), hung)

    # -- output ----------------------------------------------------------------------------
    def emit(self, slot: int) -> Emission[np.ndarray]:
        """What to send for a slot (it is sent now, whatever is ready)."""
        return self.scheduler.emit(slot)

    def base(self, slot: int) -> MakeFrame:
        """A slot's base frame, made only if its picture needs it (nothing generated yet)."""
        return self.frames.pick(self.scheduler.slot_time(slot))

    @staticmethod
    def picture(emission: Emission[np.ndarray], base: MakeFrame) -> np.ndarray:
        """The RGB picture for a slot (any thread)."""
        return emission_image(emission, base)


class LivePipeline(StreamPipeline):
    """The pipeline on the wall clock.

    Inbound audio and camera frames are pushed in as they arrive; ``run`` hands due slots to the
    backend's shared worker and sleeps until audio, a result or a deadline wakes it; the outgoing
    tracks await ``next_video_frame`` (each slot at its deadline, composed off the loop) and
    ``next_audio_frame`` (the inbound audio delayed by exactly the same amount), both stamped from
    the same media clock.
    """

    def __init__(
        self,
        stream_id: str,
        generation: Generation,
        fps: int,
        size: tuple[int, int] | None,
        typical_fps: float | None,
        min_budget_s: float,
        ledger: FrameLedger,
        failures_before_fallback: int = 3,
        on_event: Callable[[str], None] = _ignore,
        on_failure: Callable[[str, bool], None] = _ignore,
        expression: Expression = Expression(),
    ) -> None:
        self.clock = MediaClock()
        self.camera = CameraIn()
        avatar = generation.avatar
        frames: BaseFrames
        if avatar.image is None:
            frames = CameraFrames(self.camera, self.clock, size)  # size None: the camera's own (first frame)
        else:
            assert size is not None
            frames = Portrait(fit_cover(avatar.image, *size))
        super().__init__(
            stream_id, generation, fps, expected_backend_s(typical_fps, fps), min_budget_s, frames, AudioIn(),
            failures_before_fallback, on_event, on_failure, expression,
        )
        self.ledger = ledger
        self.expects_audio = False  # set by the transport: the peer said it sends audio
        self.started = asyncio.Event()  # the scheduler has its first slot
        self._wake = asyncio.Event()
        self._jobs: dict[int, asyncio.Future[JobResult]] = {}  # slots at the backend
        self._video_slot = 0
        self._audio_chunk = 0
        self.stopped = False  # results that come back after this are not counted

    # -- inbound ---------------------------------------------------------------------------
    def push_audio(self, frame: av.AudioFrame, packet_arrival: float | None = None) -> None:
        """An audio frame was handed over; its packet had arrived at ``packet_arrival`` (None if unknown)."""
        arrival = MediaClock.wall_now()
        self.audio_in.push(frame, arrival)
        self.clock.observe(self.audio_in.horizon_s, arrival, packet_arrival)
        self._wake.set()

    def push_camera(self, frame: av.VideoFrame, taken: float | None, packet_arrival: float | None = None) -> None:
        """A camera frame was handed over; ``taken`` is the media time it was taken at, if known,
        ``packet_arrival`` when its first packet arrived, if known."""
        delivered = MediaClock.wall_now()
        self.camera.push(frame, delivered if packet_arrival is None else packet_arrival, taken)
        if isinstance(self.frames, CameraFrames):  # only a camera avatar waits for the camera
            taken_s = self.camera.newest_taken(self.clock)
            if taken_s is not None:
                self.clock.observe_camera(taken_s, delivered)
            self._wake.set()  # a slot may have been waiting for this frame

    def input_horizon(self) -> float:
        """As the base's; a camera avatar's slot also waits (until its last call) for the camera
        frame taken nearest to it: the camera's path can be slower than the microphone's, and
        a slot cut from an older frame would show the picture behind the sound."""
        horizon = super().input_horizon()
        if isinstance(self.frames, CameraFrames) and self.camera.frames:
            taken = self.camera.newest_taken(self.clock)
            if taken is not None:
                seen = taken + self.scheduler.config.interval_s / 2  # the nearest frame to a slot up to here is in
                horizon = min(horizon, seen + self.scheduler.config.lookahead_s)
        return horizon

    def wake(self) -> None:
        self._wake.set()

    # -- generation ------------------------------------------------------------------------
    async def run(self) -> None:
        """Hand due slots to the backend; sleep until audio, a result or a deadline wakes us."""
        try:
            await asyncio.wait_for(self.clock.started.wait(), AUDIO_WAIT_S if self.expects_audio else 0.0)
        except (asyncio.TimeoutError, TimeoutError):
            if self.expects_audio:
                self.on_event("no audio arrived: running without it (the mouth stays still)")
            self.clock.start_without_audio(MediaClock.wall_now())
        if isinstance(self.frames, CameraFrames) and self.frames.size is None:
            await self._take_camera_size(self.frames)
        scheduler = self.scheduler
        scheduler.start_at(self.clock.media_now())
        self._video_slot = scheduler.next_emit
        self._audio_chunk = math.floor(scheduler.slot_time(scheduler.next_emit) * PLAYBACK_RATE / AUDIO_CHUNK)
        self.started.set()
        interval = scheduler.config.interval_s
        while not self.stopped:
            for slot in self.due(self.clock.media_now()):
                self._dispatch(slot)
            self._wake.clear()
            timeout = self.clock.wall(scheduler.next_wakeup()) - MediaClock.wall_now()
            if timeout <= 0:
                timeout = interval  # nothing can be handed out until a result or a send frees room
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except (asyncio.TimeoutError, TimeoutError):
                pass

    async def _take_camera_size(self, frames: CameraFrames) -> None:
        try:
            await asyncio.wait_for(self.camera.first.wait(), AUDIO_WAIT_S)
            first = self.camera.frames[0].frame
            frames.size = camera_size(first.width, first.height)
        except (asyncio.TimeoutError, TimeoutError):
            self.on_event("no camera frames arrived: sending a blank picture")
            frames.size = CAMERA_SIZE

    def _dispatch(self, slot: int) -> None:
        generation = self.generation
        assert generation.worker is not None
        build = self.job(slot)
        self.ledger.dispatched(slot, MediaClock.wall_now())
        future = generation.worker.submit(build, due=self.clock.wall(self.scheduler.finish_by(slot)))
        self._jobs[slot] = future
        future.add_done_callback(lambda done: self._on_result(slot, done, generation.backend))

    def _on_result(self, slot: int, future: asyncio.Future[JobResult], backend: Backend) -> None:
        self._jobs.pop(slot, None)
        if future.cancelled():
            return
        error = future.exception()  # read even after the stream stopped: asyncio reports errors never read
        if self.stopped:
            return
        now = self.clock.media_now()
        if isinstance(error, FrameExpired):
            self.expired(slot, now)
        elif error is not None:
            self.failed(slot, error, now, backend)
        else:
            result = future.result()
            self.completed(slot, result.frame, now, result.service_s)
            self.ledger.generated(slot, result)
        self._wake.set()

    # -- outbound --------------------------------------------------------------------------
    async def next_video_frame(self) -> av.VideoFrame:
        """Wait for the next slot's deadline and return what to send for it."""
        await self.started.wait()
        scheduler = self.scheduler
        slot = self._video_slot
        wait = self.clock.wall(scheduler.deadline(slot)) - MediaClock.wall_now()
        if wait > 0:
            await asyncio.sleep(wait)
        elif -wait > scheduler.config.interval_s:
            # the encoder fell behind: skip to the newest slot that is due (counted as unsent)
            slot = math.floor((self.clock.media_now() - scheduler.config.delay_s) * scheduler.config.fps)
        emission, base = self.emit(slot), self.base(slot)
        emitted = MediaClock.wall_now()
        self._abandon_late_jobs(slot)
        self._video_slot = slot + 1
        self._wake.set()
        frame = await asyncio.get_running_loop().run_in_executor(None, self._compose, emission, base)
        frame.pts = round(slot * 90000 / scheduler.config.fps)
        frame.time_base = VIDEO_TIME_BASE
        self._record(emission, emitted)
        return frame

    def _abandon_late_jobs(self, sent: int) -> None:
        """Withdraw jobs whose slot has been sent without them: a job that is not yet running is
        never run (a backlog of stale work would make every later frame late too)."""
        for slot in [s for s in self._jobs if s <= sent]:
            self._jobs.pop(slot).cancel()
            self.scheduler.abandon(slot)

    def _compose(self, emission: Emission[np.ndarray], base: MakeFrame) -> av.VideoFrame:
        """The picture for one slot, as a YUV frame for the encoder (executor thread)."""
        yuv = cv2.cvtColor(self.picture(emission, base), cv2.COLOR_RGB2YUV_I420)
        return av.VideoFrame.from_ndarray(yuv, format="yuv420p")

    def _record(self, emission: Emission[np.ndarray], emitted: float) -> None:
        handoff = MediaClock.wall_now()
        lookahead_s = self.backend.lookahead_s
        newest = self.scheduler.slot_time(emission.slot) + lookahead_s
        audio = self.audio_in.arrival_and_features_of(newest) if self.audio_in.started else None
        self.ledger.sent(emission, emitted, handoff, audio, lookahead_s, self.scheduler.counts)

    async def next_audio_frame(self) -> av.AudioFrame:
        """The inbound audio, 20 ms at a time, delayed by exactly the video's delay.

        Never skips: the Opus encoder numbers RTP timestamps by samples sent, so a skipped chunk
        would shift audio against video for good. If sending fell behind it catches up instead.
        """
        await self.started.wait()
        chunk = self._audio_chunk
        self._audio_chunk += 1
        media_s = chunk * AUDIO_CHUNK / PLAYBACK_RATE
        wait = self.clock.wall(media_s + self.scheduler.config.delay_s) - MediaClock.wall_now()
        if wait > 0:
            await asyncio.sleep(wait)
        pcm = self.audio_in.playback(chunk * AUDIO_CHUNK, AUDIO_CHUNK)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = PLAYBACK_RATE
        frame.pts = chunk * AUDIO_CHUNK
        frame.time_base = AUDIO_TIME_BASE
        return frame

    def stop(self) -> None:
        """The stream is ending: nothing more is counted."""
        self.stopped = True

    def release(self) -> None:
        """Drop what the stream holds (its jobs' futures refer back to it)."""
        self.stop()
        self._jobs.clear()
        self.ledger.close()
        self.audio_in.release()
        if isinstance(self.frames, CameraFrames):
            self.frames.release()
