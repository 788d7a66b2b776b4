"""Streaming log-mel features: 80 bins, 25 ms Hann window, 10 ms hop, at 16 kHz.

Frame ``i`` covers samples [i * HOP, i * HOP + WIN) of the 16 kHz stream, so its centre is at
(i * HOP + WIN / 2) / 16000 s. This is librosa's ``melspectrogram(center=False)`` framing, which
lets a stream computed 20 ms at a time match a one-shot computation on the whole signal.
"""

from __future__ import annotations

import functools

import numpy as np

SAMPLE_RATE = 16000
N_MELS = 80
WIN = 400  # 25 ms
HOP = 160  # 10 ms
N_FFT = 400
FMIN = 0.0
FMAX = 8000.0
LOG_FLOOR = 1e-10  # power floor before the log: silence is log(1e-10) = -23.03


@functools.lru_cache(maxsize=1)
def mel_filterbank() -> np.ndarray:
    """(N_MELS, N_FFT // 2 + 1) Slaney-normalised mel filters, as librosa builds them; built once
    per process (read-only) and shared by every session's LogMel."""
    import librosa  # imported here: librosa's import is slow (~2 s) and only the filter matrix is needed

    filters = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX).astype(np.float32)
    filters.flags.writeable = False
    return filters


def hann_window() -> np.ndarray:
    """Periodic Hann window, as ``scipy.signal.get_window('hann', WIN)`` (librosa's default)."""
    n = np.arange(WIN)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / WIN)).astype(np.float32)


SILENCE = float(np.log(LOG_FLOOR))


class LogMel:
    """Computes log-mel frames from 16 kHz float32 audio frames of WIN samples."""

    def __init__(self) -> None:
        self._filters = mel_filterbank()
        self._window = hann_window()

    def frames(self, pcm: np.ndarray) -> np.ndarray:
        """Log-mel of every full frame in ``pcm`` (framing from sample 0): (n_frames, N_MELS)."""
        if len(pcm) < WIN:
            return np.zeros((0, N_MELS), np.float32)
        count = 1 + (len(pcm) - WIN) // HOP
        strided = np.lib.stride_tricks.sliding_window_view(pcm, WIN)[::HOP][:count]
        spectrum = np.fft.rfft(strided * self._window, n=N_FFT, axis=1)
        power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
        return np.log(np.maximum(power @ self._filters.T, LOG_FLOOR)).astype(np.float32)


def frame_center_s(index: int) -> float:
    """Media time of the centre of mel frame ``index``."""
    return (index * HOP + WIN / 2) / SAMPLE_RATE


def frames_centered_in(start_s: float, stop_s: float) -> range:
    """Indices of the mel frames whose centre lies in [start_s, stop_s)."""
    first = int(np.ceil((start_s * SAMPLE_RATE - WIN / 2) / HOP - 1e-9))
    stop = int(np.ceil((stop_s * SAMPLE_RATE - WIN / 2) / HOP - 1e-9))
    return range(first, max(first, stop))
