"""Augmentation of the audio-to-mouth model's training audio for real microphones (gain, noise,
reverberation, colouring, speed), applied before the server's own log-mel
(:class:`engines.features.LogMel`) is computed on it.
"""

from __future__ import annotations

import numpy as np

from engines import features

SR = features.SAMPLE_RATE


def augment(pcm: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """A random microphone: colouring, reverberation, noise and gain (speed is applied by the caller)."""
    from scipy.signal import fftconvolve, lfilter

    x = pcm.astype(np.float64)
    if rng.random() < 0.5 * strength:  # simple EQ: a one-pole high/low shelf
        a = rng.uniform(-0.9, 0.9)
        x = lfilter([1.0, -a * rng.uniform(0, 1)], [1.0], x)
    if rng.random() < 0.5 * strength:  # reverberation: exponentially decaying noise impulse response
        rt60 = rng.uniform(0.1, 0.6)
        n = int(rt60 * SR)
        t = np.arange(n) / SR
        ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
        ir[0] = 1.0 / rng.uniform(0.05, 0.5)  # direct path against the reverberant tail
        ir /= np.sqrt(np.sum(ir**2))
        x = fftconvolve(x, ir)[: len(x)]
    rms = np.sqrt(np.mean(x**2)) + 1e-9
    if rng.random() < 0.7 * strength:  # background noise: white, pink or brown, 5..40 dB SNR
        noise = rng.standard_normal(len(x))
        kind = rng.integers(3)
        if kind == 1:
            noise = lfilter([1.0], [1.0, -0.95], noise)
        elif kind == 2:
            noise = lfilter([1.0], [1.0, -0.995], noise)
        noise *= rms / (np.sqrt(np.mean(noise**2)) + 1e-9) * 10 ** (-rng.uniform(5, 40) / 20)
        x = x + noise
    x = x / (np.max(np.abs(x)) + 1e-9) * 10 ** (rng.uniform(-35, -1) / 20)  # peak level -35..-1 dBFS
    return x.astype(np.float32)


def change_speed(pcm: np.ndarray, factor: float) -> np.ndarray:
    """Play ``factor`` times faster (pitch and formants move with it); times scale by 1/factor."""
    from scipy.signal import resample_poly

    up = 100
    down = int(round(100 * factor))
    return resample_poly(pcm, up, down).astype(np.float32)
