"""Fake-capture media for the browser end-to-end tests.

Chromium can replace the camera and microphone with files
(``--use-file-for-fake-video-capture=clip.y4m`` and
``--use-file-for-fake-audio-capture=clip.wav``) and loops them. This module turns a real
talking clip from the shared test data into those two files with PyAV.
"""

from __future__ import annotations

import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTDATA_VIDEO = REPO_ROOT.parent / "shared" / "testdata" / "video"
DEFAULT_CLIP = TESTDATA_VIDEO / "vretalking_face_2.mp4"

VIDEO_FPS = 25
VIDEO_SIZE = 320
AUDIO_RATE = 48_000
MAX_SECONDS = 8.0


def _require_clip(clip: Path) -> Path:
    clip = Path(clip)
    if not clip.is_file():
        raise FileNotFoundError(
            f"test clip {clip} is missing: the browser tests need the shared test data "
            f"(expected under {TESTDATA_VIDEO})"
        )
    return clip


def write_y4m(
    clip: Path,
    out_path: Path,
    *,
    fps: int = VIDEO_FPS,
    size: int = VIDEO_SIZE,
    max_seconds: float = MAX_SECONDS,
) -> int:
    """Write the clip's first ``max_seconds`` as a yuv420p y4m at ``fps``, scaled to size x size.

    Source frames are picked by timestamp (repeated or skipped) so the output has a constant
    frame rate whatever the source's. Returns the number of frames written.
    """
    clip = _require_clip(clip)
    n_max = int(round(max_seconds * fps))
    written = 0
    with av.open(str(clip)) as src, av.open(str(out_path), "w", format="yuv4mpegpipe") as dst:
        vin = src.streams.video[0]
        vout = dst.add_stream("rawvideo", rate=fps)
        vout.width = size
        vout.height = size
        vout.pix_fmt = "yuv420p"
        vout.codec_context.time_base = Fraction(1, fps)
        first_t = None
        for frame in src.decode(vin):
            if frame.time is None:
                continue
            if first_t is None:
                first_t = frame.time
            t = frame.time - first_t
            # Emit every output slot whose time this source frame covers (starts at or before t).
            img = None
            while written < n_max and written / fps <= t + 0.5 / fps:
                if img is None:
                    img = frame.reformat(width=size, height=size, format="yuv420p")
                out = av.VideoFrame.from_ndarray(img.to_ndarray(), format="yuv420p")
                out.pts = written
                out.time_base = Fraction(1, fps)
                for packet in vout.encode(out):
                    dst.mux(packet)
                written += 1
            if written >= n_max:
                break
        for packet in vout.encode(None):
            dst.mux(packet)
    if written == 0:
        raise RuntimeError(f"no video frames decoded from {clip}")
    return written


def write_wav(
    clip: Path,
    out_path: Path,
    *,
    rate: int = AUDIO_RATE,
    max_seconds: float = MAX_SECONDS,
) -> float:
    """Write the clip's first ``max_seconds`` of audio as 16-bit PCM mono WAV at ``rate``.

    Returns the duration written, in seconds.
    """
    clip = _require_clip(clip)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    chunks: list[np.ndarray] = []
    with av.open(str(clip)) as src:
        if not src.streams.audio:
            raise RuntimeError(f"{clip} has no audio stream")
        for frame in src.decode(src.streams.audio[0]):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        raise RuntimeError(f"no audio decoded from {clip}")
    pcm = np.concatenate(chunks).astype("<i2")[: int(max_seconds * rate)]
    with wave.open(str(out_path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return len(pcm) / rate


def make_fake_capture_files(
    out_dir: Path, clip: Path = DEFAULT_CLIP, *, max_seconds: float = MAX_SECONDS
) -> tuple[Path, Path]:
    """Create (or reuse) ``<clip stem>.y4m`` and ``<clip stem>.wav`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clip = _require_clip(clip)
    y4m = out_dir / f"{clip.stem}.y4m"
    wav = out_dir / f"{clip.stem}.wav"
    if not y4m.is_file() or y4m.stat().st_size == 0:
        write_y4m(clip, y4m, max_seconds=max_seconds)
    if not wav.is_file() or wav.stat().st_size == 0:
        write_wav(clip, wav, max_seconds=max_seconds)
    return y4m, wav


if __name__ == "__main__":  # pragma: no cover - manual helper
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    print(*make_fake_capture_files(target), sep="\n")
