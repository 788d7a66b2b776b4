"""Reading audio and video files with PyAV (offline render, tests, benchmarks)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import av
import numpy as np


def load_audio(path: str | Path, sample_rate: int, seconds: float | None = None) -> np.ndarray:
    """Decode the first audio stream to mono float32 at ``sample_rate`` (optionally the first seconds)."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    chunks: list[np.ndarray] = []
    limit = None if seconds is None else int(seconds * sample_rate)
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"{path} has no audio track")
        for frame in container.decode(audio=0):
            frame.pts = None
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
            if limit is not None and sum(map(len, chunks)) >= limit:
                break
        chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return pcm[:limit] if limit is not None else pcm


def video_frames(path: str | Path) -> Iterator[tuple[float, np.ndarray]]:
    """(time in seconds, RGB uint8 frame) for every frame of the first video stream."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            time = float(frame.pts * stream.time_base) if frame.pts is not None else 0.0
            yield time, frame.to_ndarray(format="rgb24")


def video_fps(path: str | Path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or 25
        return float(rate)
