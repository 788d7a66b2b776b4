"""Whisper-tiny features for a streaming window, in numpy (serving needs no PyTorch).

MuseTalk feeds every 25 fps frame 10 steps (200 ms) of Whisper encoder features at 50 Hz, from
all the encoder's hidden states (the embeddings and each layer's output: 5 for Whisper-tiny),
each of 384 values: [10, 5, 384] reshaped to [50, 384]. For video frame i the steps are
``2i - 4 .. 2i + 5``, i.e. media time [t - 80 ms, t + 120 ms).

Streaming: instead of one encoder run over a 30 s segment, each frame's features come from an
encoder run over a sliding window of ``WINDOW_S`` = 1.0 s of audio ending ``LOOKAHEAD_S`` =
0.2 s after the frame (0.8 s of past context; the extra 80 ms past the last step used gives the
right edge some future context). The stride is one video frame (40 ms at 25 fps). The window
needs at least 0.8 s of past audio (``CONTEXT_S``); before that it is zero-padded, like the
start of a file in MuseTalk.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160  # 10 ms mel frames; the encoder halves them: 50 Hz features
N_MELS = 80
CONTEXT_S = 0.8
LOOKAHEAD_S = 0.2
WINDOW_S = CONTEXT_S + LOOKAHEAD_S
WINDOW_MEL_FRAMES = round(WINDOW_S * 100)  # 100
FEATURE_HZ = 50
STEPS_BEFORE, STEPS_PER_FRAME = 4, 10  # 80 ms before the frame, 200 ms in all


@lru_cache(maxsize=1)
def mel_filters() -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS).astype(np.float32)


def log_mel(pcm: np.ndarray) -> np.ndarray:
    """Whisper's log-mel spectrogram of 16 kHz mono audio: (80, len(pcm) // 160)."""
    pcm = np.asarray(pcm, np.float32)
    padded = np.pad(pcm, N_FFT // 2, mode="reflect")
    n_frames = 1 + (len(padded) - N_FFT) // HOP
    frames = np.lib.stride_tricks.as_strided(
        padded, (n_frames, N_FFT), (padded.strides[0] * HOP, padded.strides[0])
    )
    window = np.hanning(N_FFT + 1)[:-1].astype(np.float32)  # periodic Hann, as torch.hann_window
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    mel = mel_filters() @ power[:-1].T  # Whisper drops the last frame
    log = np.log10(np.maximum(mel, 1e-10))
    log = np.maximum(log, log.max() - 8.0)
    return ((log + 4.0) / 4.0).astype(np.float32)


def frame_window(pcm: np.ndarray, before_s: float, after_s: float) -> np.ndarray:
    """The encoder's input window for a frame from audio covering [t - before_s, t + after_s):
    exactly [t - CONTEXT_S, t + LOOKAHEAD_S), zero-padded where the audio is shorter."""
    start = round((before_s - CONTEXT_S) * SAMPLE_RATE)
    want = round(WINDOW_S * SAMPLE_RATE)
    out = np.zeros(want, np.float32)
    src0, dst0 = max(start, 0), max(-start, 0)
    n = min(len(pcm) - src0, want - dst0)
    if n > 0:
        out[dst0 : dst0 + n] = pcm[src0 : src0 + n]
    return out


def frame_features(hidden: np.ndarray) -> np.ndarray:
    """The UNet's audio input from the encoder's stacked hidden states of one window.

    ``hidden``: (steps, layers, dim) over the window; returns (10 * layers, dim): the 10 steps
    from 80 ms before the frame (which sits CONTEXT_S into the window).
    """
    first = round(CONTEXT_S * FEATURE_HZ) - STEPS_BEFORE
    clip = hidden[first : first + STEPS_PER_FRAME]
    return clip.reshape(-1, clip.shape[-1])


def positional_encoding(length: int, dim: int) -> np.ndarray:
    """The sinusoidal encoding MuseTalk adds to the audio tokens before the UNet."""
    position = np.arange(length, dtype=np.float32)[:, None]
    div = np.exp(np.arange(0, dim, 2, dtype=np.float32) * (-math.log(10000.0) / dim))
    pe = np.zeros((length, dim), np.float32)
    pe[:, 0::2] = np.sin(position * div)
    pe[:, 1::2] = np.cos(position * div)
    return pe
