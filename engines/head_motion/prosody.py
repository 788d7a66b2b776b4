"""Prosody of 16 kHz speech at 25 frames a second: what drives the head, brows and blinks.

Per frame time t, over a 40 ms window centred on it:

* ``energy``: level in dBFS mapped to 0 (-60 dBFS, silence) .. 1 (-20 dBFS, loud speech);
  absolute, so a window of live audio gives the same value as the whole clip would;
* ``onset``: how much the energy rose over the last 80 ms (stressed syllables start this way);
* ``pitch``: voicing-weighted log fundamental frequency, relative to 150 Hz, in octaves
  (autocorrelation, 70-400 Hz; 0 where unvoiced);
* ``voiced``: the autocorrelation peak (0 .. 1): near 1 on vowels, low on pauses and noise;
* ``stress``: 1 where the onset peaks (higher than 40 ms either side) above STRESS_ONSET, the
  corpus' 80th percentile of onset peaks: the strongest syllables, where brows lift.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
FPS = 25.0
WINDOW = 640  # 40 ms
FEATURES = ("energy", "onset", "pitch", "voiced", "stress")
F0_MIN, F0_MAX = 70.0, 400.0
ONSET_S = 0.08
STRESS_ONSET = 0.39  # measured on ../shared/corpus (189 clips): 80th percentile of onset peaks


def _frames(pcm: np.ndarray, centres_s: np.ndarray) -> np.ndarray:
    """(len(centres), WINDOW) samples around each centre (zeros beyond the audio)."""
    starts = np.round(centres_s * SAMPLE_RATE).astype(np.int64) - WINDOW // 2
    index = starts[:, None] + np.arange(WINDOW)[None, :]
    valid = (index >= 0) & (index < len(pcm))
    return np.where(valid, pcm[np.clip(index, 0, max(len(pcm) - 1, 0))] if len(pcm) else 0.0, 0.0)


def energy(pcm: np.ndarray, centres_s: np.ndarray) -> np.ndarray:
    rms = np.sqrt(np.mean(_frames(pcm, centres_s) ** 2, axis=1) + 1e-12)
    return np.clip((20.0 * np.log10(rms) + 60.0) / 40.0, 0.0, 1.0)


def pitch(pcm: np.ndarray, centres_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log2(f0 / 150 Hz) where voiced else 0, voicing 0..1) per centre."""
    frames = _frames(pcm, centres_s)
    frames = frames - frames.mean(axis=1, keepdims=True)
    spectrum = np.fft.rfft(frames * np.hanning(WINDOW), n=2 * WINDOW, axis=1)
    ac = np.fft.irfft(np.abs(spectrum) ** 2, axis=1)[:, :WINDOW]
    lo, hi = int(SAMPLE_RATE / F0_MAX), int(SAMPLE_RATE / F0_MIN)
    lag = lo + np.argmax(ac[:, lo:hi], axis=1)
    peak = ac[np.arange(len(lag)), lag] / np.maximum(ac[:, 0], 1e-9)
    voiced = np.clip(peak, 0.0, 1.0) * (ac[:, 0] > 1e-6 * WINDOW)
    f0 = SAMPLE_RATE / lag
    return np.where(voiced > 0.5, np.log2(f0 / 150.0), 0.0), voiced


def prosody(pcm: np.ndarray, centres_s: np.ndarray) -> np.ndarray:
    """(len(centres), len(FEATURES)) features at each centre (seconds into ``pcm``)."""
    pcm = np.asarray(pcm, np.float64)
    e = energy(pcm, centres_s)
    onset = _onset(pcm, centres_s, e)
    step = 1.0 / FPS
    peak = (onset > _onset(pcm, centres_s - step)) & (onset >= _onset(pcm, centres_s + step)) & (onset > STRESS_ONSET)
    f0, voiced = pitch(pcm, centres_s)
    return np.stack([e, onset, f0, voiced, peak.astype(np.float64)], axis=1)


def _onset(pcm: np.ndarray, centres_s: np.ndarray, now: np.ndarray | None = None) -> np.ndarray:
    """How much the energy rose over the ONSET_S before each centre."""
    now = energy(pcm, centres_s) if now is None else now
    return np.maximum(now - energy(pcm, centres_s - ONSET_S), 0.0)
