"""MuseTalk's offline audio features, to measure how far the streaming windows are from them.

Offline (MuseTalk's ``AudioProcessor``): the whole clip is cut into 30 s segments, each padded
to 30 s (as Whisper's feature extractor does), encoded once, and every hidden state is kept:
50 steps per second. Frame ``i`` (25 fps) takes steps ``2i - 4 .. 2i + 5``, zeros outside the
clip. Streaming (``audio.py``, what the backend serves): each frame has its own encoder run
over 1 s of audio, 0.8 s before the frame and 0.2 s after it. The two differ because the
encoder's attention sees 30 s (mostly padding) offline and 1 s here, and because the log-mel's
dynamic-range floor (the maximum less 8) is taken over a different stretch of audio.

Both functions take the same encoder (``features``: log-mel (B, 80, T) -> (B, T/2, layers, dim)),
so only the procedure differs.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from engines.musetalk.audio import CONTEXT_S, FEATURE_HZ, SAMPLE_RATE, STEPS_BEFORE, STEPS_PER_FRAME, WINDOW_S, frame_features, log_mel

Features = Callable[[np.ndarray], np.ndarray]
SEGMENT_S = 30


def offline_features(features: Features, pcm: np.ndarray, fps: float = 25.0) -> np.ndarray:
    """(frames, 10 * layers, dim) for a 16 kHz clip, as MuseTalk computes them offline."""
    segment = SEGMENT_S * SAMPLE_RATE
    hidden = []
    for start in range(0, len(pcm), segment):
        padded = np.zeros(segment, np.float32)
        piece = pcm[start : start + segment]
        padded[: len(piece)] = piece
        hidden.append(features(log_mel(padded)[None])[0])
    steps = np.concatenate(hidden)[: math.floor(len(pcm) / SAMPLE_RATE * FEATURE_HZ)]
    frames = math.floor(len(pcm) / SAMPLE_RATE * fps)
    per_frame = FEATURE_HZ / fps
    padded_steps = np.concatenate([np.zeros_like(steps[:STEPS_BEFORE]), steps, np.zeros_like(steps[: 3 * STEPS_PER_FRAME])])
    out = []
    for i in range(frames):
        first = math.floor(i * per_frame)
        clip = padded_steps[first : first + STEPS_PER_FRAME]
        out.append(clip.reshape(-1, clip.shape[-1]))
    return np.stack(out)


def streaming_features(features: Features, pcm: np.ndarray, fps: float = 25.0, batch: int = 16) -> np.ndarray:
    """(frames, 10 * layers, dim): each frame from its own 1 s window, as the backend serves."""
    frames = math.floor(len(pcm) / SAMPLE_RATE * fps)
    width = round(WINDOW_S * SAMPLE_RATE)
    out = []
    for first in range(0, frames, batch):
        mels = []
        for i in range(first, min(frames, first + batch)):
            start = round((i / fps - CONTEXT_S) * SAMPLE_RATE)
            window = np.zeros(width, np.float32)
            lo, hi = max(start, 0), min(start + width, len(pcm))
            if hi > lo:
                window[lo - start : hi - start] = pcm[lo:hi]
            mels.append(log_mel(window))
        out.extend(frame_features(h) for h in features(np.stack(mels)))
    return np.stack(out)


def compare(streaming: np.ndarray, offline: np.ndarray, layers: int) -> dict[str, object]:
    """Relative L2 error and cosine similarity per frame, overall and per hidden state."""
    frames = min(len(streaming), len(offline))
    s = streaming[:frames].reshape(frames, STEPS_PER_FRAME, layers, -1).astype(np.float64)
    o = offline[:frames].reshape(frames, STEPS_PER_FRAME, layers, -1).astype(np.float64)

    def figures(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
        a, b = a.reshape(frames, -1), b.reshape(frames, -1)
        norm_b = np.maximum(np.linalg.norm(b, axis=1), 1e-12)
        relative = np.linalg.norm(a - b, axis=1) / norm_b
        cosine = np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * norm_b, 1e-12)
        return {
            "relative_error_median": round(float(np.median(relative)), 4),
            "relative_error_p95": round(float(np.percentile(relative, 95)), 4),
            "cosine_median": round(float(np.median(cosine)), 4),
            "cosine_p5": round(float(np.percentile(cosine, 5)), 4),
        }

    return {
        "frames": frames,
        "all": figures(s, o),
        "per_hidden_state": [figures(s[:, :, k], o[:, :, k]) for k in range(layers)],
    }
