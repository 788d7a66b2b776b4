"""Offline render: the live pipeline (audio in, features, scheduler, backend) run on files.

The audio is fed in 20 ms frames stamped like the ones aiortc decodes, on a simulated clock, so
each frame sees exactly the audio it would see live. With ``timing="ideal"`` the backend takes no
simulated time and every frame is generated (what quality measurements want); with
``timing="realtime"`` each job takes the time it really took on this machine, so the output shows
the drops and interpolations a live session here would show.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import av
import numpy as np

from engines.auto import AUTO, choose_backend
from engines.base import DEFAULT_EMOTION, DEFAULT_MOUTH_GAIN, Expression, avatars_dir
from engines.images import fit_cover, read_image
from engines.media_io import load_audio
from engines.registry import BackendRegistry
from stream_server.audio_in import PLAYBACK_RATE, AudioIn
from stream_server.avatars import BUNDLED, enrolled_picture, find_enrolled, frame_portrait
from stream_server.options import OptionError, expression_options, framing_option
from stream_server.pipeline import Generation, MakeFrame, Portrait, StreamPipeline, expected_backend_s
from stream_server.scheduler import MIN_BUDGET_S, Emission
from stream_server.simulate import simulate

log = logging.getLogger(__name__)

CHUNK = 960  # 20 ms at 48 kHz, as aiortc delivers Opus
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".y4m"}


class RenderError(ValueError):
    """Bad render input; the message says what to fix."""


@dataclass
class RenderResult:
    output: Path
    frames: int
    counts: dict[str, int]
    duration_s: float
    wall_s: float
    backend_stats: dict[str, int] = field(default_factory=dict)  # the backend's counts for the stream


class VideoBase:
    """Base frames from a video file (a recorded camera), looped if the audio is longer."""

    def __init__(self, path: Path, size: tuple[int, int]) -> None:
        self.path, self.size = path, size
        self._frames: Iterator[tuple[float, np.ndarray]] = iter(())
        self._current: tuple[float, np.ndarray] | None = None
        self._next: tuple[float, np.ndarray] | None = None
        self._duration = self._probe_duration()
        self._restart()

    def _probe_duration(self) -> float:
        with av.open(str(self.path)) as container:
            if not container.streams.video:
                raise RenderError(f"{self.path} has no video stream")
            stream = container.streams.video[0]
            if stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
            return float(container.duration or 0) / av.time_base

    def _decode(self) -> Iterator[tuple[float, np.ndarray]]:
        with av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                yield float(frame.pts * stream.time_base), frame.to_ndarray(format="rgb24")

    def _restart(self) -> None:
        self._frames = self._decode()
        self._current = next(self._frames, None)
        if self._current is None:
            raise RenderError(f"{self.path} has no decodable video frames")
        self._next = next(self._frames, None)
        self._loop_start = self._current[0]

    def pick(self, time_s: float) -> MakeFrame:
        return lambda: self.at(time_s)  # made in slot order: the decoder only goes forward

    def at(self, time_s: float) -> np.ndarray:
        """The frame showing at ``time_s`` (times only increase between calls)."""
        assert self._current is not None
        local = self._loop_start + (time_s % self._duration if self._duration > 0 else 0.0)
        if local < self._current[0]:
            self._restart()  # looped around
        while self._next is not None and self._next[0] <= local:
            self._current, self._next = self._next, next(self._frames, None)
        return fit_cover(self._current[1], *self.size)


def audio_frames(pcm48: np.ndarray) -> Iterator[av.AudioFrame]:
    """20 ms s16 mono frames with RTP-like pts, as the live server receives them."""
    samples = np.clip(pcm48 * 32768.0, -32768, 32767).astype(np.int16)
    for n in range(0, len(samples), CHUNK):
        chunk = samples[n : n + CHUNK]
        if len(chunk) < CHUNK:
            chunk = np.pad(chunk, (0, CHUNK - len(chunk)))
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = PLAYBACK_RATE
        frame.pts = n
        frame.time_base = Fraction(1, PLAYBACK_RATE)
        yield frame


def render(
    avatar: str,
    audio: Path,
    output: Path,
    backend_name: str,
    fps: float = 25,
    size: tuple[int, int] | None = None,
    timing: str = "ideal",
    registry: BackendRegistry | None = None,
    progress: bool = True,
    mouth_gain: float = DEFAULT_MOUTH_GAIN,
    emotion: str = DEFAULT_EMOTION,
    emotion_intensity: float = 1.0,
    motion: str | None = None,
    framing: str = "whole",  # offline renders keep the picture as given, so they line up with their source
) -> RenderResult:
    started = time.perf_counter()
    registry = registry or BackendRegistry(BUNDLED["astronaut"])
    if timing not in ("ideal", "realtime"):
        raise RenderError("timing must be 'ideal' or 'realtime'")
    try:
        expression = expression_options(
            {"mouth_gain": mouth_gain, "emotion": emotion, "emotion_intensity": emotion_intensity, "motion": motion},
            Expression())
        framing = framing_option(framing)
    except OptionError as exc:
        raise RenderError(str(exc)) from exc
    if not audio.is_file():
        raise RenderError(f"audio file {audio} does not exist")
    try:
        pcm48 = load_audio(audio, PLAYBACK_RATE)
    except (av.FFmpegError, ValueError) as exc:
        raise RenderError(f"cannot read audio from {audio}: {exc}") from exc
    if len(pcm48) < PLAYBACK_RATE // 10:
        raise RenderError(f"{audio} holds less than 0.1 s of audio")
    duration = len(pcm48) / PLAYBACK_RATE

    enrolled = find_enrolled(avatar, avatars_dir())
    avatar_path = BUNDLED.get(avatar) or (enrolled_picture(enrolled) if enrolled else Path(avatar))
    if not avatar_path.is_file():
        raise RenderError(f"avatar {avatar!r} is neither a bundled avatar ({', '.join(BUNDLED)}), an enrolled one "
                          f"(under {avatars_dir()}) nor a file")
    avatar_name = avatar if enrolled or avatar in BUNDLED else avatar_path.stem
    is_video = avatar_path.suffix.lower() in VIDEO_SUFFIXES
    image = None if is_video else read_image(avatar_path)
    if size is None:
        if image is not None:
            size = (image.shape[1], image.shape[0])
        else:
            height, width = _video_size(avatar_path)
            size = (width // 2 * 2, height // 2 * 2)
    width, height = size

    if backend_name == AUTO:
        choice = choose_backend(registry, fps)
        log.info("auto: %s", choice.reason)
        backend_name = choice.backend
    backend = registry.get(backend_name)
    portrait = None if image is None else frame_portrait(image, framing, enrolled is not None, width, height)
    prepared = backend.prepare_avatar(avatar_name, portrait)

    backend_s = 0.0 if timing == "ideal" else expected_backend_s(registry.info(backend_name).typical_fps, fps)
    frames = Portrait(portrait) if portrait is not None else VideoBase(avatar_path, size)
    pipeline = StreamPipeline(
        "render", Generation(backend, prepared), fps, backend_s, MIN_BUDGET_S, frames, AudioIn(capacity_s=max(12.0, duration + 2.0)),
        expression=expression,
    )
    chunks = list(audio_frames(pcm48))
    measured: dict[int, float] = {}

    def on_chunk(n: int) -> None:
        pipeline.audio_in.push(chunks[n], arrival=(n + 1) * CHUNK / PLAYBACK_RATE)

    def generate(slots: Sequence[int]) -> list[np.ndarray]:
        jobs = [pipeline.job(slot)() for slot in slots]
        begun = time.perf_counter()
        frames = backend.generate(jobs)
        for slot in slots:
            measured[slot] = (time.perf_counter() - begun) / len(slots)
        return list(frames)

    def service_s(slot: int) -> float:
        return measured.get(slot, 0.0) if timing == "realtime" else 0.0

    writer = Mp4Writer(output, width, height, fps)
    total = int(np.ceil(duration * fps - 1e-6))
    last_report = [time.perf_counter()]

    def on_emit(now: float, emission: Emission[np.ndarray]) -> None:
        writer.add_video(pipeline.picture(emission, pipeline.base(emission.slot)))
        if progress and time.perf_counter() - last_report[0] > 1.0:
            last_report[0] = time.perf_counter()
            print(f"  rendered {emission.slot + 1}/{total} frames", file=sys.stderr, flush=True)

    try:
        simulate(
            pipeline,
            duration,
            generate=generate,
            service_s=service_s,
            audio_chunk_s=CHUNK / PLAYBACK_RATE,
            audio_end_s=len(chunks) * CHUNK / PLAYBACK_RATE,
            on_chunk=on_chunk,
            on_emit=on_emit,
        )
        writer.add_audio(pcm48)
        backend_stats = backend.stream_stats(pipeline.stream_id)
    finally:
        writer.close()
        backend.close_stream(pipeline.stream_id)
    return RenderResult(output, total, pipeline.scheduler.counts.as_dict(), duration, time.perf_counter() - started, backend_stats)


def _video_size(path: Path) -> tuple[int, int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.codec_context.height, stream.codec_context.width


class Mp4Writer:
    """H.264 + AAC in MP4 (yuv420p, faststart): plays in every browser."""

    def __init__(self, path: Path, width: int, height: int, fps: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(path), "w", options={"movflags": "+faststart"})
        self._video = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self._video.width, self._video.height = width, height
        self._video.pix_fmt = "yuv420p"
        # near-lossless (about 2.4 MB per minute at 512x512): at crf 20 the coding noise around
        # small mouths moved FaceMesh's reading of the output enough to change the lip-sync
        # measure by up to 0.15 on a 224 px clip (and with the encoder's thread count)
        self._video.options = {"preset": "veryfast", "crf": "12"}
        self._audio = self._container.add_stream("aac", rate=PLAYBACK_RATE)
        self._audio.layout = "mono"
        self._frames = 0

    def add_video(self, rgb: np.ndarray) -> None:
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts = self._frames
        self._frames += 1
        for packet in self._video.encode(frame):
            self._container.mux(packet)

    def add_audio(self, pcm48: np.ndarray) -> None:
        samples = pcm48.astype(np.float32).reshape(1, -1)
        step = 1024
        for start in range(0, samples.shape[1], step):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start : start + step]), format="fltp", layout="mono")
            frame.sample_rate = PLAYBACK_RATE
            frame.pts = start
            for packet in self._audio.encode(frame):
                self._container.mux(packet)

    def close(self) -> None:
        for packet in self._video.encode(None):
            self._container.mux(packet)
        for packet in self._audio.encode(None):
            self._container.mux(packet)
        self._container.close()
