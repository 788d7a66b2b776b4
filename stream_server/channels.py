"""Channels: one producer drives an avatar, any number of viewers (and a recorder) receive it.

The producer is an ordinary session whose output is not sent back to its own peer (a WHIP
client such as OBS, or the page). A relay task per output track pulls each frame from the
session as its deadline comes (so the session runs whether anyone watches or not) and hands the
same frame to every subscriber: each WHEP viewer's sender, the egress (a WHIP publication to an
SFU, ``egress.py``) and the recorder. The backend runs
once per channel whatever the number of viewers. aiortc encodes per sender, so each viewer costs
one VP8 (or H.264) and one Opus encode.

Frames are re-stamped on the channel's own timeline, so a viewer's stream continues smoothly
when the producer changes. Speaking started / stopped events come from the outgoing audio (what
viewers hear), with hysteresis.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Protocol

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from stream_server.options import SessionOptions

if TYPE_CHECKING:
    from stream_server.recording import Recorder
    from stream_server.session import Session

log = logging.getLogger(__name__)

CHANNEL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # safe in a URL path and a file name

QUEUE_FRAMES = 4  # per subscriber and kind; a slow one loses its oldest frames, never stalls others
SPEECH_ON_DBFS, SPEECH_OFF_DBFS = -40.0, -46.0
SPEECH_ON_S, SPEECH_OFF_S = 0.1, 0.4  # how long the level must stay past a threshold


class Subscriber:
    """One consumer of a channel's output: bounded queues of video and audio frames."""

    def __init__(self) -> None:
        self.queues: dict[str, asyncio.Queue[av.VideoFrame | av.AudioFrame | None]] = {
            "video": asyncio.Queue(QUEUE_FRAMES), "audio": asyncio.Queue(QUEUE_FRAMES * 3)
        }
        self.dropped = 0

    def put(self, kind: str, frame: av.VideoFrame | av.AudioFrame | None) -> None:
        queue = self.queues[kind]
        if queue.full():
            queue.get_nowait()  # the oldest goes: this subscriber is behind
            self.dropped += 1
        queue.put_nowait(frame)

    def close(self) -> None:
        for kind in self.queues:
            self.put(kind, None)


class ChannelTrack(MediaStreamTrack):
    """What a viewer's sender reads: the channel's frames for one subscriber."""

    def __init__(self, kind: str, subscriber: Subscriber) -> None:
        super().__init__()
        self.kind = kind
        self._queue = subscriber.queues[kind]
        self.sent = 0  # frames handed to this sender's encoder

    async def recv(self) -> av.VideoFrame | av.AudioFrame:
        frame = await self._queue.get()
        if frame is None or self.readyState != "live":
            self.stop()
            raise MediaStreamError
        self.sent += 1
        return frame


@dataclass
class SpeechDetector:
    """Speaking started / stopped from the level of 20 ms audio frames, with hysteresis."""

    speaking: bool = False
    _run_s: float = 0.0

    def feed(self, pcm: np.ndarray, seconds: float) -> bool | None:
        """Returns True when speech starts, False when it stops, None otherwise."""
        rms = float(np.sqrt(np.mean((pcm.astype(np.float32) / 32768.0) ** 2))) if pcm.size else 0.0
        level = 20 * np.log10(max(rms, 1e-9))
        crossing = level < SPEECH_OFF_DBFS if self.speaking else level > SPEECH_ON_DBFS
        self._run_s = self._run_s + seconds if crossing else 0.0
        if self._run_s >= (SPEECH_OFF_S if self.speaking else SPEECH_ON_S):
            self.speaking, self._run_s = not self.speaking, 0.0
            return self.speaking
        return None


class ChannelTimeline:
    """Puts each producer's frames on the channel's own timeline, continuous across producers.

    One shift in seconds for both kinds, taken from the producer's first frame of either kind:
    the producer's audio and video keep the alignment its session gave them, even when its first
    video frame is a later slot than its first audio chunk (a session that started behind skips
    video slots, never audio)."""

    def __init__(self) -> None:
        self._end = Fraction(0)  # channel time (s) the frames placed so far reach
        self._shift: Fraction | None = None  # channel time minus the current producer's media time

    def restart(self) -> None:
        """A new producer: its first frame goes where the channel's timeline has got to."""
        self._shift = None

    def place(self, frame: av.VideoFrame | av.AudioFrame, fps: int) -> None:
        assert frame.pts is not None and frame.time_base is not None
        seconds = frame.pts * frame.time_base
        if self._shift is None:
            self._shift = self._end - seconds
        placed = seconds + self._shift
        frame.pts = round(placed / frame.time_base)
        duration = Fraction(frame.samples, frame.sample_rate) if isinstance(frame, av.AudioFrame) else Fraction(1, fps)
        self._end = max(self._end, placed + duration)


class Publication(Protocol):
    """Where the channel is published (``egress.Egress``, a WHIP client); named here by what the
    channel needs of it, so that this module does not import the egress that imports it."""

    url: str

    def describe(self) -> dict[str, Any]: ...

    async def stop(self) -> None: ...


@dataclass
class Channel:
    name: str
    options: SessionOptions  # what the producer's session runs: backend, avatar, fps, size
    producer: Session | None = None
    producer_resource: str | None = None  # the WHIP resource id of the producer
    subscribers: set[Subscriber] = field(default_factory=set)
    viewers: dict[str, tuple[Any, Subscriber]] = field(default_factory=dict)  # WHEP resource -> (peer, queues)
    recorder: Recorder | None = None
    egress: Publication | None = None  # the channel published to a WHIP endpoint (an SFU)
    speech: SpeechDetector = field(default_factory=SpeechDetector)
    listeners: set[asyncio.Queue[dict[str, Any]]] = field(default_factory=set)
    created: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self._pumps: list[asyncio.Task[None]] = []
        self._timeline = ChannelTimeline()

    # -- producer ----------------------------------------------------------------------------
    def attach(self, session: Session, resource: str) -> None:
        """Make ``session`` the producer and start relaying its output."""
        self.producer, self.producer_resource = session, resource
        self._timeline.restart()
        self._pumps = [
            asyncio.create_task(self._pump("video", session.video_out), name=f"channel-{self.name}-video"),
            asyncio.create_task(self._pump("audio", session.audio_out), name=f"channel-{self.name}-audio"),
        ]
        self.notify({"type": "producer", "connected": True})

    async def detach(self, reason: str) -> None:
        """The producer has gone (or is sent away): stop relaying; viewers stay connected."""
        session, self.producer, self.producer_resource = self.producer, None, None
        for task in self._pumps:
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        self._pumps = []
        if session is not None:
            await session.close(reason)
        if self.speech.speaking:
            self.speech.speaking = False
            self.notify({"type": "speaking", "speaking": False})
        self.notify({"type": "producer", "connected": False, "reason": reason})

    async def _pump(self, kind: str, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                self._timeline.place(frame, self.options.fps)
                if kind == "audio":
                    self._listen(frame)
                for subscriber in list(self.subscribers):
                    subscriber.put(kind, frame)
                if self.recorder is not None:
                    self.recorder.add(kind, frame)
        except MediaStreamError:
            pass  # the session ended
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("channel %s: relaying %s failed", self.name, kind)

    def _listen(self, frame: av.AudioFrame) -> None:
        change = self.speech.feed(frame.to_ndarray().reshape(-1), frame.samples / frame.sample_rate)
        if change is not None:
            self.notify({"type": "speaking", "speaking": change})

    # -- viewers and events --------------------------------------------------------------------
    def subscribe(self) -> Subscriber:
        subscriber = Subscriber()
        self.subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)
        subscriber.close()

    def notify(self, event: dict[str, Any]) -> None:
        event = {**event, "channel": self.name, "time": round(time.time(), 3)}
        for queue in list(self.listeners):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "options": self.options.to_json(),
            "producer": self.producer.id if self.producer else None,
            "viewers": len(self.viewers),
            "speaking": self.speech.speaking,
            "recording": self.recorder.path.name if self.recorder else None,
            # outbound streams encoded from this channel: one per WHEP viewer, one for the egress
            "encoders": len(self.subscribers),
            "egress": self.egress.describe() if self.egress else None,
        }

    async def close(self, reason: str) -> None:
        if self.egress is not None:
            await self.egress.stop()  # DELETEs its resource at the endpoint
            self.egress = None
        if self.recorder is not None:
            await self.recorder.stop()
            self.recorder = None
        await self.detach(reason)
        for pc, subscriber in list(self.viewers.values()):
            self.unsubscribe(subscriber)
            await pc.close()
        self.viewers.clear()
