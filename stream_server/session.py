"""One WebRTC session: signalling, peer liveness, fallback and the session's lifecycle.

The media work (clock, audio and camera in, scheduler, jobs, the frames to send) is the
session's ``LivePipeline`` (stream_server/pipeline.py), which knows nothing of WebRTC: the
session feeds it the peer's tracks, sends its output on two outgoing tracks, moves it to a
fallback backend when it reports a failing one, and releases everything when the peer goes.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Coroutine

from aiortc import MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from engines.base import Avatar, Backend, Expression
from stream_server.camera_in import taken_at
from stream_server.ids import new_id
from stream_server.inbound_audio import DEFAULT_AUDIO_PREFETCH, set_audio_prefetch
from stream_server.ledger import FrameLedger
from stream_server.liveness import PacketListener
from stream_server.options import EXPRESSION_NAMES, OptionError, SessionOptions, expression_options
from stream_server.pipeline import Generation, LivePipeline
from stream_server.packet_arrivals import PacketArrivals
from stream_server.sender_reports import SenderReports
from stream_server.stages import TraceWriter
from stream_server.tracks import DelayedAudioTrack, SlotVideoTrack
from stream_server.worker import BackendWorker

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.5


class OfferError(ValueError):
    """The offer cannot be answered; the message is shown to the user."""


def peer_connection(ice_servers: list[dict[str, Any]] | None) -> RTCPeerConnection:
    """A peer connection using the configured STUN/TURN servers (``RTCIceServer`` dicts)."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[RTCIceServer(**server) for server in ice_servers or []]))


@dataclass(frozen=True)
class SessionLimits:
    idle_timeout_s: float = 10.0  # no packet (RTP or RTCP) from the peer for this long ends it
    max_session_s: float = 12 * 3600.0
    failures_before_fallback: int = 3  # failed frames in a row that switch to the fallback


# (failed backend name, options) -> the fallback's backend, worker and prepared avatar, or None
Replacement = tuple[Backend, BackendWorker, Avatar]
FallbackProvider = Callable[[str, SessionOptions], Awaitable[Replacement | None]]


class Session:
    """A peer connection whose camera and microphone drive one stream pipeline, and whose
    outgoing tracks (or a channel's viewers) carry the pipeline's output."""

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
        instance: str = "",
        audio_prefetch: int = DEFAULT_AUDIO_PREFETCH,
    ) -> None:
        self.id = new_id(instance)  # "s1-3fa9c2d1e0b4" on the server named s1 (ids.py)
        self.options = options
        self.audio_prefetch = audio_prefetch  # packets aiortc holds before the oldest (inbound_audio.py)
        self.limits = limits or SessionLimits()
        size = None if options.width is None else (options.width, options.height)
        self.ledger = FrameLedger(self.id, backend.name, options.fps, trace)
        self.pipeline = LivePipeline(
            self.id, Generation(backend, avatar, worker), options.fps, size, typical_fps, min_budget_s, self.ledger,  # type: ignore[arg-type]
            self.limits.failures_before_fallback, on_event=self.add_event, on_failure=self._start_fallback,
            expression=options.expression,
        )
        self.pc = peer_connection(ice_servers)
        self.video_out = SlotVideoTrack(self.pipeline)
        self.audio_out = DelayedAudioTrack(self.pipeline)
        self.created = time.monotonic()
        self.closed = asyncio.Event()  # set when closing starts
        self.released = asyncio.Event()  # set when closing has finished: nothing of it runs any more
        self.close_reason = ""
        self.events: collections.deque[str] = collections.deque(maxlen=20)
        self.events_total = 0  # events ever added (the deque keeps the last 20)
        self.fallbacks: list[dict[str, str]] = []  # {"from", "to", "reason"}, in order
        self._fallback = fallback
        self._packets = PacketListener()
        self._reports: dict[str, SenderReports] = {}  # by kind, for placing camera frames
        self._arrivals: dict[str, PacketArrivals] = {}  # by kind: when each frame's packets came
        self._switching = False
        self._tasks: list[asyncio.Task[None]] = []
        if avatar.notice:
            self.add_event(avatar.notice)

    @property
    def backend(self) -> Backend:
        return self.pipeline.backend

    @property
    def avatar(self) -> Avatar:
        return self.pipeline.avatar

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
        self.pipeline.expects_audio = any(
            t.kind == "audio" and t.direction in ("sendrecv", "recvonly") for t in self.pc.getTransceivers()
        )
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        self._packets.listen(self.pc)
        media = [t for t in self.pc.getTransceivers() if t.kind in ("audio", "video")]
        self._reports = {t.kind: SenderReports(t.receiver) for t in media}
        self._arrivals = {t.kind: PacketArrivals(t.receiver) for t in media}
        for t in self.pc.getTransceivers():
            if t.kind == "audio":
                set_audio_prefetch(t.receiver, self.audio_prefetch)
        self._start_task(self.pipeline.run(), "drive")
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

    async def _watch(self) -> None:
        """End the session when the peer has gone quiet or the session has run its maximum time."""
        limits = self.limits
        while not self.closed.is_set():
            await asyncio.sleep(WATCH_INTERVAL_S)
            if self._packets.quiet_s() > limits.idle_timeout_s:
                asyncio.create_task(self.close(
                    f"nothing heard from the peer for {limits.idle_timeout_s:g} s (tab closed or network lost)"
                ))
                return
            if time.monotonic() - self.created > limits.max_session_s:
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
                self.pipeline.push_audio(frame, self._packet_arrival("audio", frame.pts))
        except MediaStreamError:
            log.info("session %s: audio track ended", self.id)

    async def _consume_video(self, track: MediaStreamTrack) -> None:
        pipeline = self.pipeline
        try:
            while True:
                frame = await track.recv()
                taken = taken_at(frame, self._reports, pipeline.audio_in)
                pipeline.push_camera(frame, taken, self._packet_arrival("video", frame.pts))
        except MediaStreamError:
            log.info("session %s: video track ended", self.id)

    def _packet_arrival(self, kind: str, pts: int | None) -> float | None:
        arrivals = self._arrivals.get(kind)
        return None if arrivals is None else arrivals.arrival_of(pts)

    # -- fallback --------------------------------------------------------------------------
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
        self.pipeline.switch(Generation(backend, avatar, worker))
        self.ledger.switched(backend.name)
        self.fallbacks.append({"from": failed.name, "to": backend.name, "reason": reason})
        self.add_event(f"backend {failed.name} failed ({reason}): this session continues on {backend.name}")
        self._switching = False
        if not hung:
            # forget the stream in the failed backend, off the loop (it may be slow to answer)
            asyncio.get_running_loop().run_in_executor(None, failed.close_stream, self.id)
        self.pipeline.wake()

    # -- lifecycle -------------------------------------------------------------------------
    def add_event(self, message: str) -> None:
        log.warning("session %s: %s", self.id, message)
        self.events.append(message)
        self.events_total += 1

    def snapshot(self) -> dict[str, Any]:
        pipeline = self.pipeline
        snapshot = self.ledger.stats.snapshot(
            avatar=self.options.avatar,
            counts=pipeline.scheduler.counts.as_dict(),
            delay_s=pipeline.scheduler.config.delay_s,
            lookahead_s=self.backend.lookahead_s,
            jitter_s=pipeline.clock.jitter_s,
            backend_stats=self.backend.stream_stats(self.id),
            uptime_s=time.monotonic() - self.created,
        )
        snapshot["fallbacks"] = list(self.fallbacks)
        expression = pipeline.expression
        snapshot["mouth_gain"] = expression.mouth_gain
        snapshot["emotion"] = expression.emotion
        snapshot["emotion_intensity"] = expression.emotion_intensity
        return snapshot

    def set_expression(self, raw: dict[str, Any]) -> Expression:
        """Change the stream's expression while it runs (OptionError on a bad value, nothing
        changed); the frame jobs made from now on carry it."""
        unknown = sorted(set(raw) - set(EXPRESSION_NAMES))
        if unknown:
            raise OptionError(f"unknown expression field(s) {', '.join(unknown)}", list(EXPRESSION_NAMES))
        expression = expression_options(raw, self.pipeline.expression)
        if expression != self.pipeline.expression:
            self.pipeline.expression = expression
            self.add_event(f"expression: mouth gain {expression.mouth_gain:g}, emotion {expression.emotion} "
                           f"({expression.emotion_intensity:g}), motion {expression.motion or 'default'}")
        return expression

    async def close(self, reason: str = "closed") -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self.pipeline.stop()
        log.info("session %s closing: %s", self.id, reason)
        self.close_reason = reason
        try:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self.video_out.stop()
            self.audio_out.stop()
            await self.pc.close()
            self.backend.close_stream(self.id)
            self._release()
        finally:
            self.released.set()

    def _release(self) -> None:
        """Break the reference cycles through this session, so that it (its audio resamplers and
        their threads, its buffers, its peer connection) is freed as soon as the server forgets
        it, not at some later full garbage collection: churn showed ~40 threads and tens of MB
        per ended session lingering until Python's rare full collection."""
        self._tasks.clear()  # finished tasks keep their tracebacks, whose frames hold us
        self._packets.release()
        for arrivals in self._arrivals.values():
            arrivals.release()
        self.pc.remove_all_listeners()
        self.video_out.release()
        self.audio_out.release()
        self.pipeline.release()
