"""Prosody to head motion, brows and blinks: a small model learnt from real talkers.

For each motion channel (head yaw, pitch, roll in degrees; head x, y and brow height in eye
distances) the value at time t is

    amount * ( w . prosody(t - lags)  +  sigma(e) * n(t) )

* ``w . prosody``: a linear filter over the last 0.8 s and the next 0.08 s of prosody
  (``prosody.py``: energy, onsets, pitch, voicing at 25 fps), fitted by ridge regression on the
  corpus' FaceMesh tracks (``tracks.py``, each clip relative to its own median pose); it has no
  constant term, so silence gives the rest pose: the head returns to it over pauses, never drifts.
* ``sigma(e) * n(t)``: what the voice does not determine. ``n`` is a seeded, stationary,
  unit-variance process with the spectrum real heads have once the filter's part is removed (a
  sum of cosines whose frequencies are drawn from that spectrum), and ``sigma`` grows with the
  speech energy of the last 0.8 s as the real spread does: a calm, breathing head in silence, more
  motion while talking. A channel whose real tracks are skewed (brows: they lift from rest and
  fall back, median speaker's skewness 0.9) is free only upwards. ``n`` is a pure function of t and the seed, so frames can be made in any
  order, by any worker, and a replay gives the same video; two seeds give two takes.
* Blinks: a renewal process whose intervals follow the corpus' blink rate (gamma, shape 2), each
  blink 150-250 ms, also a pure function of t and the seed.

Weights: ``weights.npz`` beside this file, written by ``python -m engines.head_motion.train``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.head_motion.prosody import FEATURES, FPS, prosody

CHANNELS = ("yaw", "pitch", "roll", "tx", "ty", "brow")
LAGS = np.arange(-20, 3)  # frames at 25 fps: 0.8 s back, 0.08 s ahead (the mouth model's lookahead is 0.1 s)
CONTEXT_S = 0.8  # the speech energy that scales the free motion
N_COSINES = 48
WEIGHTS = Path(__file__).with_name("weights.npz")
ONE_SIDED_SCALE = 1.0 / math.sqrt(0.5 - 0.5 / math.pi)  # max(n, 0) of a unit normal has variance 1/2 - 1/(2 pi)
AMOUNTS = {"still": 0.0, "natural": 1.0, "lively": 1.6}  # by engines.base.MOTIONS


@dataclass(frozen=True)
class MotionWeights:
    filters: np.ndarray  # (channels, lags * features)
    sigma: np.ndarray  # (channels, 2): spread = a + b * mean energy of the last CONTEXT_S
    spectrum_hz: np.ndarray  # (bins,) frequency grid of the free motion's spectrum
    spectrum: np.ndarray  # (channels, bins): its power, normalised to sum 1 per channel
    blink_interval_s: float  # mean time between blinks
    one_sided: np.ndarray  # (channels,) bool: free motion only above rest (brows lift from rest and fall back)

    def save(self, path: Path) -> None:
        np.savez(path, filters=self.filters.astype(np.float32), sigma=self.sigma.astype(np.float32),
                 spectrum_hz=self.spectrum_hz.astype(np.float32), spectrum=self.spectrum.astype(np.float32),
                 blink_interval_s=np.float32(self.blink_interval_s), one_sided=self.one_sided.astype(bool),
                 channels=np.array(CHANNELS),
                 features=np.array(FEATURES), lags=LAGS)

    @classmethod
    def load(cls, path: Path = WEIGHTS) -> "MotionWeights":
        with np.load(path) as d:
            if tuple(d["channels"]) != CHANNELS or tuple(d["features"]) != FEATURES or not np.array_equal(d["lags"], LAGS):
                raise ValueError(f"{path}: made for other channels, features or lags; retrain with "
                                 "python -m engines.head_motion.train")
            return cls(d["filters"].astype(np.float64), d["sigma"].astype(np.float64), d["spectrum_hz"].astype(np.float64),
                       d["spectrum"].astype(np.float64), float(d["blink_interval_s"]), d["one_sided"].astype(bool))


def recent_energy(features: np.ndarray) -> np.ndarray:
    """The mean speech energy over the lags up to now, of filter inputs ``(..., lags, features)``:
    what scales the free motion."""
    return features[..., LAGS <= 0, FEATURES.index("energy")].mean(axis=-1)


@dataclass(frozen=True)
class HeadPose:
    """One frame's motion: degrees for the rotations, eye distances for the rest; blink 0..1."""

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    tx: float = 0.0
    ty: float = 0.0
    brow: float = 0.0
    blink: float = 0.0

    @property
    def turns(self) -> bool:
        """The head itself moves (turn or shift)."""
        return any((self.yaw, self.pitch, self.roll, self.tx, self.ty))

    @property
    def moves(self) -> bool:
        return self.turns or bool(self.brow)


class HeadMotion:
    """One stream's motion generator: ``at(time_s, pcm, centre_s)``."""

    def __init__(self, weights: MotionWeights, seed: int = 0) -> None:
        self.weights = weights
        rng = np.random.default_rng(seed)
        self._freqs, self._phases = [], []
        for power in weights.spectrum:
            cdf = np.cumsum(power) / max(float(power.sum()), 1e-12)
            bins = np.searchsorted(cdf, rng.uniform(0, 1, N_COSINES))
            step = float(weights.spectrum_hz[1] - weights.spectrum_hz[0])
            self._freqs.append(weights.spectrum_hz[np.minimum(bins, len(cdf) - 1)] + rng.uniform(-0.5, 0.5, N_COSINES) * step)
            self._phases.append(rng.uniform(0, 2 * math.pi, N_COSINES))
        self._blinks = Blinks(weights.blink_interval_s, seed + 7919)

    def free(self, time_s: float) -> np.ndarray:
        """The unit-variance free motion of each channel at ``time_s``."""
        return np.array([math.sqrt(2.0 / N_COSINES) * float(np.sum(np.cos(2 * math.pi * f * time_s + p)))
                         for f, p in zip(self._freqs, self._phases)])

    def at(self, time_s: float, pcm: np.ndarray, centre_s: float, amount: float = 1.0) -> HeadPose:
        """The pose at media time ``time_s``, from 16 kHz ``pcm`` whose sample ``centre_s`` * 16000
        is that instant (the past CONTEXT_S and a little future are used where present)."""
        blink = self._blinks.at(time_s)
        if amount <= 0.0:
            return HeadPose(blink=blink)
        times = centre_s + LAGS / FPS
        features = prosody(pcm, times)
        driven = self.weights.filters @ features.reshape(-1)
        recent = recent_energy(features)
        spread = np.maximum(self.weights.sigma[:, 0] + self.weights.sigma[:, 1] * recent, 0.0)
        free = self.free(time_s)
        free = np.where(self.weights.one_sided, ONE_SIDED_SCALE * np.maximum(free, 0.0), free)
        values = amount * (driven + spread * free)
        return HeadPose(*(float(v) for v in values), blink=blink)


class Blinks:
    """Blink closure (0 open .. 1 shut) as a pure function of time, for one seed."""

    def __init__(self, interval_s: float, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self.interval_s = interval_s
        self._events: list[tuple[float, float]] = []  # (start, duration), sorted
        self._horizon = float(self._rng.uniform(0.5, 1.0) * interval_s)

    def _next_interval(self) -> float:
        return float(np.clip(self._rng.gamma(2.0, self.interval_s / 2.0), 1.0, 3.0 * self.interval_s))

    def at(self, time_s: float) -> float:
        if time_s < 0:
            return 0.0
        while self._horizon <= time_s + 1.0:
            duration = float(self._rng.uniform(0.15, 0.25))
            self._events.append((self._horizon, duration))
            self._horizon += duration + self._next_interval()
        for start, duration in reversed(self._events):
            if start <= time_s:
                x = (time_s - start) / duration
                if x >= 1.0:
                    return 0.0
                close = 0.4  # shut in 40 % of the blink, open more slowly, eased
                p = x / close if x < close else 1.0 - (x - close) / (1.0 - close)
                return float(p * p * (3.0 - 2.0 * p))
        return 0.0


def motion_amount(motion: str | None, camera: bool) -> float:
    """How much motion a stream's ``motion`` option adds (AMOUNTS); unset: ``natural`` on a
    portrait, nothing on the camera, whose head is the user's own."""
    if motion is None:
        return 0.0 if camera else AMOUNTS["natural"]
    return AMOUNTS[motion]
