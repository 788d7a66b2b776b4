"""Recording a channel's output to MP4 (H.264 + AAC), video and audio on one timeline.

Frames come from the channel's relay (on the event loop) into a bounded queue; one thread
encodes them. Both tracks' timestamps are the channel's, which stamps them from the session's
single media clock, so the file's audio and video stay in sync; the file starts at the first
frame of either kind.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from fractions import Fraction
from pathlib import Path

import av

log = logging.getLogger(__name__)

AUDIO_RATE = 48000
QUEUE_FRAMES = 250  # about 3 s of video and audio frames together


class Recorder:
    def __init__(self, path: Path, fps: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fps = fps
        self.started = time.time()
        self.dropped = 0
        self.error: str | None = None
        self._queue: queue.Queue[tuple[str, av.VideoFrame | av.AudioFrame] | None] = queue.Queue(QUEUE_FRAMES)
        self._thread = threading.Thread(target=self._run, name=f"record-{path.stem}", daemon=True)
        self._thread.start()

    def add(self, kind: str, frame: av.VideoFrame | av.AudioFrame) -> None:
        """Queue a frame (event loop); if the encoder is behind, the frame is lost and counted."""
        try:
            self._queue.put_nowait((kind, frame))
        except queue.Full:
            self.dropped += 1

    async def stop(self) -> float:
        """Finish the file; returns its length in seconds of wall time recorded."""
        while self._thread.is_alive():  # (a writer that failed has stopped reading the queue)
            try:
                self._queue.put_nowait(None)
                break
            except queue.Full:
                await asyncio.sleep(0.05)
        await asyncio.to_thread(self._thread.join)
        return time.time() - self.started

    def _run(self) -> None:
        container = av.open(str(self.path), "w", options={"movflags": "+faststart"})
        video = audio = None
        origin: float | None = None  # channel time (s) of the file's first frame
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=AUDIO_RATE, frame_size=1024)  # AAC's frame
        next_sample: int | None = None  # the next AAC sample's place; the audio is gapless from its first frame
        try:
            while (item := self._queue.get()) is not None:
                kind, frame = item
                seconds = float(frame.pts * frame.time_base)
                if origin is None:
                    if kind != "video":
                        continue  # the file starts with a picture (its size is the first frame's)
                    # both streams before the first packet: a container takes no stream later
                    origin = seconds
                    video = container.add_stream("libx264", rate=self.fps)
                    video.width, video.height, video.pix_fmt = frame.width, frame.height, "yuv420p"
                    video.options = {"preset": "veryfast", "crf": "20"}
                    video.codec_context.time_base = Fraction(1, self.fps)
                    audio = container.add_stream("aac", rate=AUDIO_RATE)
                    audio.layout = "mono"
                if seconds < origin:
                    continue  # audio from before the first picture
                if kind == "video":
                    out = frame.reformat(format="yuv420p") if frame.format.name != "yuv420p" else frame
                    copy = av.VideoFrame.from_ndarray(out.to_ndarray(), format="yuv420p")
                    copy.pts, copy.time_base = round((seconds - origin) * self.fps), Fraction(1, self.fps)
                    for packet in video.encode(copy):  # type: ignore[union-attr]
                        container.mux(packet)
                else:
                    if next_sample is None:
                        next_sample = round((seconds - origin) * AUDIO_RATE)
                    # a copy: viewers' senders share the frame, and the resampler needs pts unset
                    copy = av.AudioFrame.from_ndarray(frame.to_ndarray(), format=frame.format.name, layout=frame.layout.name)
                    copy.sample_rate = frame.sample_rate
                    for part in resampler.resample(copy):
                        part.pts, part.time_base = next_sample, Fraction(1, AUDIO_RATE)
                        next_sample += part.samples
                        for packet in audio.encode(part):  # type: ignore[union-attr]
                            container.mux(packet)
            for stream in (video, audio):
                if stream is not None:
                    for packet in stream.encode(None):
                        container.mux(packet)
        except Exception as exc:
            self.error = str(exc)
            log.exception("recording %s failed", self.path)
        finally:
            container.close()
