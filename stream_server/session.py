"""One WebRTC session: inbound camera and microphone in, the lip-synced avatar and delayed audio out.

The session owns the media clock, the audio rings, the recent camera frames and the scheduler.
A driver task hands due slots to the shared backend worker; the outgoing video track sends each
slot at its deadline and the outgoing audio track sends the inbound audio delayed by exactly the
same amount, both stamped from the same media clock.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
import uuid
from fractions import Fraction
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Coroutine, NamedTuple

import av
import cv2
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from engines.base import Avatar, Backend, FrameJob
from engines.images import fit_cover
from stream_server import metrics
from stream_server.audio_in import PLAYBACK_RATE, AudioIn, RtpTicks
from stream_server.clock import MediaClock
from stream_server.frames import emission_image, video_frame_to_rgb
from stream_server.options import CAMERA_SIZE, SessionOptions, camera_size
from stream_server.scheduler import Emission, FrameKind, FrameScheduler, SchedulerConfig, budget_for
from stream_server.sender_reports import SenderReports
from stream_server.stages import SlotTimes, TraceWriter, stage_durations
from stream_server.stats import SessionStats
from stream_server.worker import BackendHung, BackendWorker, FrameExpired, JobResult

log = logging.getLogger(__name__)

VIDEO_TIME_BASE = Fraction(1, 90000)
AUDIO_CHUNK = 960  # 20 ms at 48 kHz
AUDIO_TIME_BASE = Fraction(1, PLAYBACK_RATE)
AUDIO_WAIT_S = 3.0  # how long to wait for the first audio before running the clock without it
BLANK_GREY = 32


class OfferError(ValueError):
    """The offer cannot be answered; the message is shown to the user."""


@dataclass(frozen=True)
class SessionLimits:
    idle_timeout_s: float = 10.0  # no packet (RTP or RTCP) from the peer for this long ends it
    max_session_s: float = 12 * 3600.0
    failures_before_fallback: int = 3  # failed frames in a row that switch to the fallback


# (failed backend name, options) -> the fallback's backend, worker and prepared avatar, or None
Replacement = tuple[Backend, BackendWorker, Avatar]
FallbackProvider = Callable[[str, SessionOptions], Awaitable[Replacement | None]]
WATCH_INTERVAL_S = 0.5


class HeldFrame(NamedTuple):
    arrival: float  # wall time it arrived
    taken: float | None  # media time it was taken at, by sender reports (None before them)
    rtp_s: float  # its RTP time in seconds from the first frame's
    frame: av.VideoFrame


class CameraIn:
    """The last second of inbound camera frames, with their arrival times and, once the peer's
    sender reports allow it, the media time (on the microphone's timeline) each was taken at."""

    def __init__(self) -> None:
        self.frames: collections.deque[HeldFrame] = collections.deque(maxlen=32)
        self.first = asyncio.Event()
        self.by_reports = 0  # frames placed by sender reports (the rest by RTP time and the quickest arrival)
        self._rtp = RtpTicks()

    def push(self, frame: av.VideoFrame, arrival: float, media_s: float | None) -> None:
        self.frames.append(HeldFrame(arrival, media_s, self._rtp_s(frame, arrival), frame))
        self.by_reports += media_s is not None
        self.first.set()

    def at(self, media_s: float, arrival_by: float) -> av.VideoFrame | None:
        """The frame taken nearest to media time ``media_s``. Without sender reports yet, the
        newest frame that would have arrived by wall time ``arrival_by`` on the quickest path
        (else the oldest held)."""
        if self.frames and self.frames[-1].taken is not None:
            placed = [(abs(held.taken - media_s), n) for n, held in enumerate(self.frames) if held.taken is not None]
            return self.frames[min(placed)[1]].frame
        # Frames are placed by their own RTP times plus the least delay any held frame had, not
        # by when each arrived: frames held up together (a stall, a server busy starting the
        # session) and then delivered in a burst would otherwise all count as taken at the burst.
        quickest = min((held.arrival - held.rtp_s for held in self.frames), default=0.0)
        chosen = None
        for held in self.frames:
            if held.rtp_s + quickest > arrival_by and chosen is not None:
                break
            chosen = held.frame
        return chosen

    def _rtp_s(self, frame: av.VideoFrame, arrival: float) -> float:
        """The frame's RTP time in seconds from the first frame's (its arrival if unstamped:
        aiortc stamps every frame)."""
        if frame.pts is None or frame.time_base is None:
            return arrival
        return self._rtp.advance(frame.pts) * float(frame.time_base)


class Session:
    def __init__(
        self,
        options: SessionOptions,
        backend: Backend,
        worker: BackendWorker,
        avatar: Avatar,
        typical_fps: float | None,
        min_budget_s: float,
        ice_servers: list[dict[str, Any]] | None = None,
        trace: TraceWriter | None = None,
        limits: SessionLimits | None = None,
        fallback: FallbackProvider | None = None,
    ) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.options = options
        self.backend = backend
        self.worker = worker
        self.avatar = avatar
        # the output size; for the camera without a size asked for, the camera's own (first frame)
        self.size: tuple[int, int] | None = None if options.width is None else (options.width, options.height)  # type: ignore[assignment]
        servers = [RTCIceServer(**server) for server in ice_servers or []]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        self.clock = MediaClock()
        self.audio_in = AudioIn()
        self.camera = CameraIn()
        self._reports: dict[str, SenderReports] = {}  # by kind, for placing camera frames
        backend_s = 1.0 / typical_fps if typical_fps else 1.0 / options.fps
        config = SchedulerConfig(
            fps=options.fps,
            lookahead_s=backend.lookahead_s,
            budget_s=budget_for(backend_s, options.fps, min_budget_s),
        )
        self.scheduler: FrameScheduler[np.ndarray] = FrameScheduler(config, backend_s=backend_s)
        self.stats = SessionStats(self.id, backend.name, options.fps)
        self.video_out = SlotVideoTrack(self)
        self.audio_out = DelayedAudioTrack(self)
        self.expects_audio = False
        self.created = time.monotonic()
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.events: collections.deque[str] = collections.deque(maxlen=20)
        self.events_total = 0  # events ever added (the deque keeps the last 20)
        self.limits = limits or SessionLimits()
        self.last_heard = time.monotonic()  # the last RTP or RTCP packet from the peer
        self.fallbacks: list[dict[str, str]] = []  # {"from", "to", "reason"}, in order
        self._fallback = fallback
        self._listened: list[Any] = []  # DTLS transports whose packets we time (see _listen_for_packets)
        self._failures_in_row = 0
        self._switching = False
        self._wake = asyncio.Event()
        self._scheduler_started = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._video_slot = 0
        self._audio_chunk = 0
        self._base: np.ndarray | None = None
        if avatar.image is not None:
            assert self.size is not None
            self._base = fit_cover(avatar.image, *self.size)
        self._blank = self._blank_frame() if self.size else np.zeros((0, 0, 3), np.uint8)
        self._camera_cache: tuple[av.VideoFrame, np.ndarray] | None = None
        self._camera_lock = threading.Lock()
        self._slot_times: dict[int, SlotTimes] = {}  # slots handed to the backend, not yet sent
        self._jobs: dict[int, asyncio.Future[JobResult]] = {}  # slots at the backend
        self._trace = trace
        self._counted = self.scheduler.counts.as_dict()
        if avatar.notice:
            self.add_event(avatar.notice)

    # -- signalling ------------------------------------------------------------------------
    async def accept(self, sdp: str, kind: str, send_back: bool = True) -> RTCSessionDescription:
        """Apply the peer's offer and return our answer. With ``send_back`` False (a channel's
        producer) the output goes to the channel's viewers, not back to this peer."""
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_connection_state)
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        except Exception as exc:
            detail = str(exc) or f"the SDP is malformed ({type(exc).__name__})"
            raise OfferError(f"the offer could not be applied: {detail}") from exc
        kinds = {t.kind for t in self.pc.getTransceivers()}
        if send_back:
            if "video" not in kinds:
                raise OfferError("the offer has no video section, so the avatar cannot be sent back; add a video transceiver")
            self.pc.addTrack(self.video_out)
            if "audio" in kinds:
                self.pc.addTrack(self.audio_out)
        elif "audio" not in kinds:
            raise OfferError("the offer has no audio section: a channel's producer must send its microphone")
        self.expects_audio = any(
            t.kind == "audio" and t.direction in ("sendrecv", "recvonly") for t in self.pc.getTransceivers()
        )
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        self._listen_for_packets()
        self._reports = {t.kind: SenderReports(t.receiver) for t in self.pc.getTransceivers() if t.kind in ("audio", "video")}
        self._start_task(self._drive(), "drive")
        self._start_task(self._watch(), "watch")
        return self.pc.localDescription

    def _start_task(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run one of the session's own tasks; one that fails ends the session with a message
        instead of leaving it connected and silent."""
        task = asyncio.create_task(work, name=f"{name}-{self.id}")
        self._tasks.append(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        error = None if task.cancelled() else task.exception()
        if error is None:
            return
        log.error("session %s: task %s failed", self.id, task.get_name(), exc_info=error)
        if not self.closed.is_set():
            asyncio.create_task(self.close(f"internal error in {task.get_name()}: {error!r} (a bug: the server log has the details)"))

    def _listen_for_packets(self) -> None:
        """Note the time of every RTP and RTCP packet from the peer. A peer that only receives
        still sends RTCP receiver reports about once a second, so silence means it is gone."""
        transports = {id(t.receiver.transport): t.receiver.transport for t in self.pc.getTransceivers()}
        self._listened = list(transports.values())
        for transport in transports.values():
            on_rtp, on_rtcp = transport._handle_rtp_data, transport._handle_rtcp_data

            async def heard_rtp(data: bytes, arrival_time_ms: int, on_rtp: Any = on_rtp) -> None:
                self.last_heard = time.monotonic()
                await on_rtp(data, arrival_time_ms=arrival_time_ms)

            async def heard_rtcp(data: bytes, on_rtcp: Any = on_rtcp) -> None:
                self.last_heard = time.monotonic()
                await on_rtcp(data)

            transport._handle_rtp_data, transport._handle_rtcp_data = heard_rtp, heard_rtcp

    async def _watch(self) -> None:
        """End the session when the peer has gone quiet or the session has run its maximum time."""
        limits = self.limits
        while not self.closed.is_set():
            await asyncio.sleep(WATCH_INTERVAL_S)
            now = time.monotonic()
            if now - self.last_heard > limits.idle_timeout_s:
                asyncio.create_task(self.close(
                    f"nothing heard from the peer for {limits.idle_timeout_s:g} s (tab closed or network lost)"
                ))
                return
            if now - self.created > limits.max_session_s:
                asyncio.create_task(self.close(
                    f"the session reached its maximum duration ({limits.max_session_s:g} s); start a new one"
                ))
                return

    def _on_track(self, track: MediaStreamTrack) -> None:
        consume = self._consume_audio if track.kind == "audio" else self._consume_video
        self._start_task(consume(track), f"{track.kind}-in")

    async def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        log.info("session %s: connection %s", self.id, state)
        if state in ("failed", "closed"):
            await self.close(f"connection {state}")

    # -- inbound media ---------------------------------------------------------------------
    async def _consume_audio(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                arrival = MediaClock.wall_now()
                self.audio_in.push(frame, arrival)
                self.clock.observe(self.audio_in.horizon_s, arrival)
                self._wake.set()
        except MediaStreamError:
            log.info("session %s: audio track ended", self.id)

    async def _consume_video(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                self.camera.push(frame, MediaClock.wall_now(), self._taken_at(frame))
        except MediaStreamError:
            log.info("session %s: video track ended", self.id)

    def _camera_frame(self, time_s: float) -> av.VideoFrame | None:
        """The camera frame that shows media time ``time_s`` (None for a portrait avatar)."""
        return self.camera.at(time_s, self.clock.capture_wall(time_s)) if self.avatar.is_camera else None

    def _taken_at(self, frame: av.VideoFrame) -> float | None:
        """Media time at which the peer took a camera frame, by the sender reports of both
        streams (None until one of each has arrived)."""
        video, audio = self._reports.get("video"), self._reports.get("audio")
        if video is None or audio is None or frame.pts is None or frame.time_base is None or not self.audio_in.clock_rate:
            return None
        sender_s = video.sender_time(int(frame.pts), round(1 / frame.time_base))
        audio_pts = None if sender_s is None else audio.pts_at(sender_s, self.audio_in.clock_rate)
        return None if audio_pts is None else self.audio_in.media_of_pts(audio_pts)

    # -- generation ------------------------------------------------------------------------
    async def _drive(self) -> None:
        """Hand due slots to the backend; sleep until audio, a result or a deadline wakes us."""
        try:
            await asyncio.wait_for(self.clock.started.wait(), AUDIO_WAIT_S if self.expects_audio else 0.0)
        except (asyncio.TimeoutError, TimeoutError):
            if self.expects_audio:
                self.add_event("no audio arrived: running without it (the mouth stays still)")
            self.clock.start_without_audio(MediaClock.wall_now())
        if self.size is None:
            await self._take_camera_size()
        scheduler = self.scheduler
        scheduler.start_at(self.clock.media_now())
        self._video_slot = scheduler.next_emit
        self._audio_chunk = math.floor(scheduler.slot_time(scheduler.next_emit) * PLAYBACK_RATE / AUDIO_CHUNK)
        self._scheduler_started.set()
        interval = scheduler.config.interval_s
        while not self.closed.is_set():
            now = self.clock.media_now()
            horizon = self.audio_in.horizon_s if self.audio_in.started else -math.inf
            for slot in scheduler.poll(now, horizon):
                self._dispatch(slot)
            self._wake.clear()
            timeout = self.clock.wall(scheduler.next_wakeup()) - MediaClock.wall_now()
            if timeout <= 0:
                timeout = interval  # nothing can be handed out until a result or a send frees room
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except (asyncio.TimeoutError, TimeoutError):
                pass

    async def _take_camera_size(self) -> None:
        try:
            await asyncio.wait_for(self.camera.first.wait(), AUDIO_WAIT_S)
            first = self.camera.frames[0].frame
            self.size = camera_size(first.width, first.height)
        except (asyncio.TimeoutError, TimeoutError):
            self.add_event("no camera frames arrived: sending a blank picture")
            self.size = CAMERA_SIZE
        self._blank = self._blank_frame()

    def _blank_frame(self) -> np.ndarray:
        """What the camera avatar shows before its first frame."""
        assert self.size is not None
        width, height = self.size
        return np.full((height, width, 3), BLANK_GREY, np.uint8)

    def _dispatch(self, slot: int) -> None:
        time_s = self.scheduler.slot_time(slot)
        audio = self.audio_in.window(time_s, self.backend.context_s, self.backend.lookahead_s)
        camera = self._camera_frame(time_s)
        avatar = self.avatar

        def build() -> FrameJob:  # runs in the worker thread
            return FrameJob(self.id, slot, time_s, audio, self._base_frame(camera), avatar)

        backend = self.backend
        self._slot_times[slot] = SlotTimes(dispatched=MediaClock.wall_now())
        future = self.worker.submit(build, due=self.clock.wall(self.scheduler.finish_by(slot)))
        self._jobs[slot] = future
        future.add_done_callback(lambda done: self._on_result(slot, done, backend))

    def _on_result(self, slot: int, future: asyncio.Future[JobResult], backend: Backend) -> None:
        self._jobs.pop(slot, None)
        if future.cancelled():
            return
        error = future.exception()  # read even after the session closed: asyncio reports errors never read
        if self.closed.is_set():
            return
        now = self.clock.media_now()
        if isinstance(error, FrameExpired):
            self.scheduler.expired(slot, now)
        elif error is not None and backend is not self.backend:
            self.scheduler.failed(slot, now)  # a job of the backend this session has already left
        elif error is not None:
            self.scheduler.failed(slot, now)
            self._failures_in_row += 1
            if self._failures_in_row == 1:
                self.add_event(f"backend {self.backend.name} failed on a frame: {error}")
            if isinstance(error, BackendHung) or self._failures_in_row >= self.limits.failures_before_fallback:
                self._start_fallback(str(error), hung=isinstance(error, BackendHung))
        else:
            self._failures_in_row = 0
            result = future.result()
            # the scheduler plans with what a job really costs the worker, building included
            self.scheduler.completed(slot, result.frame, now, result.service_s)
            self.stats.backend_s.append(result.backend_s)
            metrics.BACKEND_TIME.labels(self.backend.name).observe(result.backend_s)
            times = self._slot_times.get(slot)
            if times is not None:
                times.picked, times.built, times.finished = result.picked, result.built, result.finished
        self._wake.set()

    def _base_frame(self, camera: av.VideoFrame | None) -> np.ndarray:
        """The frame to animate, at the output size (worker thread)."""
        if self._base is not None:
            return self._base
        if camera is None:
            return self._blank
        # the worker and the compose thread may both want the same frame: PyAV must not convert
        # one frame in two threads at once (it crashed doing so), and once is enough anyway
        with self._camera_lock:
            cached = self._camera_cache
            if cached is not None and cached[0] is camera:
                return cached[1]
            assert self.size is not None
            rgb = video_frame_to_rgb(camera, *self.size)
            self._camera_cache = (camera, rgb)  # the frame itself, so its id cannot be reused
            return rgb

    def _start_fallback(self, reason: str, hung: bool) -> None:
        if self._switching or self.closed.is_set():
            return
        self._switching = True
        self._start_task(self._fall_back(reason, hung), "fallback")

    async def _fall_back(self, reason: str, hung: bool) -> None:
        """Move this session onto the fallback backend; other sessions are not touched."""
        failed = self.backend
        replacement = None
        if self._fallback is not None:
            try:
                replacement = await self._fallback(failed.name, self.options)
            except Exception:
                log.exception("session %s: no fallback for %s", self.id, failed.name)
        if self.closed.is_set():
            return
        if replacement is None:
            asyncio.create_task(self.close(f"backend {failed.name} failed ({reason}) and no fallback backend could take over"))
            return
        backend, worker, avatar = replacement
        self.backend, self.worker, self.avatar = backend, worker, avatar
        self.stats.backend = backend.name
        self.fallbacks.append({"from": failed.name, "to": backend.name, "reason": reason})
        self.add_event(f"backend {failed.name} failed ({reason}): this session continues on {backend.name}")
        self._failures_in_row = 0
        self._switching = False
        if not hung:
            # forget the stream in the failed backend, off the loop (it may be slow to answer)
            asyncio.get_running_loop().run_in_executor(None, failed.close_stream, self.id)
        self._wake.set()

    # -- outbound media --------------------------------------------------------------------
    async def next_video_frame(self) -> av.VideoFrame:
        """Wait for the next slot's deadline and return what to send for it."""
        await self._scheduler_started.wait()
        scheduler = self.scheduler
        slot = self._video_slot
        wait = self.clock.wall(scheduler.deadline(slot)) - MediaClock.wall_now()
        if wait > 0:
            await asyncio.sleep(wait)
        elif -wait > scheduler.config.interval_s:
            # the encoder fell behind: skip to the newest slot that is due (counted as unsent)
            slot = math.floor((self.clock.media_now() - scheduler.config.delay_s) * scheduler.config.fps)
        emission = scheduler.emit(slot)
        emitted = MediaClock.wall_now()
        self._abandon_late_jobs(slot)
        self._video_slot = slot + 1
        self._wake.set()
        time_s = scheduler.slot_time(slot)
        camera = self._camera_frame(time_s)
        loop = asyncio.get_running_loop()
        frame = await loop.run_in_executor(None, self._compose, emission, camera)
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

    def _compose(self, emission: Emission[np.ndarray], camera: av.VideoFrame | None) -> av.VideoFrame:
        """The image for one slot, as a YUV frame for the encoder (executor thread)."""
        rgb = emission_image(emission, lambda: self._base_frame(camera))
        yuv = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
        return av.VideoFrame.from_ndarray(yuv, format="yuv420p")

    def _record(self, emission: Emission[np.ndarray], emitted: float) -> None:
        handoff = MediaClock.wall_now()
        newest = self.scheduler.slot_time(emission.slot) + self.backend.lookahead_s
        audio = self.audio_in.arrival_and_features_of(newest) if self.audio_in.started else None
        latency = None if audio is None else handoff - audio[0] + self.backend.lookahead_s
        times = self._slot_times.pop(emission.slot, None)
        for old in [s for s in self._slot_times if s < emission.slot]:
            del self._slot_times[old]  # dropped slots: nothing will be sent for them
        stages = None
        if emission.kind is FrameKind.GENERATED and audio is not None and times is not None:
            stages = stage_durations(audio[0], audio[1], times, emitted, handoff)
        self.stats.on_frame(emission.kind, handoff, latency, stages)
        if self._trace is not None:
            self._trace.write({
                "session": self.id, "slot": emission.slot, "kind": emission.kind.value, "handoff": round(handoff, 6),
                "audio_arrival": None if audio is None else round(audio[0], 6),
                "latency_ms": None if latency is None else round(latency * 1000, 2),
                "stages_ms": None if stages is None else {k: round(v * 1000, 2) for k, v in stages.items()},
            })
        counts = self.scheduler.counts.as_dict()
        for kind in ("generated", "interpolated", "repeated", "dropped", "unsent"):
            if counts[kind] > self._counted[kind]:
                metrics.FRAMES.labels(self.backend.name, kind).inc(counts[kind] - self._counted[kind])
        self._counted = counts
        if latency is not None:
            metrics.SERVER_LATENCY.labels(self.backend.name).observe(latency)

    async def next_audio_frame(self) -> av.AudioFrame:
        """The inbound audio, 20 ms at a time, delayed by exactly the video's delay.

        Never skips: the Opus encoder numbers RTP timestamps by samples sent, so a skipped chunk
        would shift audio against video for good. If sending fell behind it catches up instead.
        """
        await self._scheduler_started.wait()
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

    # -- lifecycle -------------------------------------------------------------------------
    def add_event(self, message: str) -> None:
        log.warning("session %s: %s", self.id, message)
        self.events.append(message)
        self.events_total += 1

    def snapshot(self) -> dict[str, Any]:
        snapshot = self.stats.snapshot(
            avatar=self.options.avatar,
            counts=self.scheduler.counts.as_dict(),
            delay_s=self.scheduler.config.delay_s,
            lookahead_s=self.backend.lookahead_s,
            jitter_s=self.clock.jitter_s,
            backend_stats=self.backend.stream_stats(self.id),
            uptime_s=time.monotonic() - self.created,
        )
        snapshot["fallbacks"] = list(self.fallbacks)
        return snapshot

    async def close(self, reason: str = "closed") -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        log.info("session %s closing: %s", self.id, reason)
        self.close_reason = reason
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.video_out.stop()
        self.audio_out.stop()
        await self.pc.close()
        self.backend.close_stream(self.id)
        try:
            metrics.FPS_OUT.remove(self.id)
        except KeyError:
            pass
        self._release()

    def _release(self) -> None:
        """Break the reference cycles through this session, so that it (its audio resamplers and
        their threads, its buffers, its peer connection) is freed as soon as the server forgets
        it, not at some later full garbage collection: churn showed ~40 threads and tens of MB
        per ended session lingering until Python's rare full collection."""
        self._tasks.clear()  # finished tasks keep their tracebacks, whose frames hold us
        for transport in self._listened:
            for name in ("_handle_rtp_data", "_handle_rtcp_data"):
                transport.__dict__.pop(name, None)  # back to the class's own methods
        self._listened = []
        self.pc.remove_all_listeners()
        self.video_out.release()
        self.audio_out.release()
        self.camera.frames.clear()
        self._camera_cache = None
        self._jobs.clear()  # their futures' callbacks refer back to us
        self._slot_times.clear()


class _SessionTrack(MediaStreamTrack):
    """An outgoing track that asks its session for every frame; cut loose when the session ends."""

    def __init__(self, session: Session) -> None:
        super().__init__()
        self._session: Session | None = session

    def release(self) -> None:
        self._session = None
        self.remove_all_listeners()

    def _live_session(self) -> Session:
        if self.readyState != "live" or self._session is None:
            raise MediaStreamError
        return self._session


class SlotVideoTrack(_SessionTrack):
    kind = "video"

    async def recv(self) -> av.VideoFrame:
        return await self._live_session().next_video_frame()


class DelayedAudioTrack(_SessionTrack):
    kind = "audio"

    async def recv(self) -> av.AudioFrame:
        return await self._live_session().next_audio_frame()
