"""Idle motion for still portraits: natural blinks and a slow, slight head sway.

Deterministic for a seed: ``IdleMotion(seed, fps).at(t)`` is a pure function of ``t``, so frames
can be rendered in any order, by any worker, and a replay gives the same video.
"""

from __future__ import annotations

import math

import numpy as np


class IdleMotion:
    """``at(time_s) -> (blink, (dx_px, dy_px, roll_deg))``.

    Blinks come every 2-6 s (occasionally a double blink), each 150-250 ms: the lid closes in about
    40 % of that time and opens more slowly, eased. The sway is a sum of slow incommensurate sines
    (0.05-0.3 Hz) of at most ``sway_px`` pixels and ``roll_deg`` degrees; scale ``sway_px`` with
    the face (e.g. 0.03 x the eye distance). ``blinks=False`` / ``sway=False`` switch either off.
    """

    def __init__(self, seed: int = 0, fps: float = 25.0, *, blinks: bool = True, sway: bool = True,
                 sway_px: float = 2.0, roll_deg: float = 1.2) -> None:
        self.fps = float(fps)
        self.blinks = blinks
        self.sway = sway
        self.sway_px = float(sway_px)
        self.roll_deg = float(roll_deg)
        self._rng = np.random.default_rng(seed)
        self._events: list[tuple[float, float]] = []  # (start, duration), sorted
        self._horizon = 0.0
        rng = np.random.default_rng(seed + 7919)
        # three sines per axis: frequencies (Hz), phases, relative amplitudes summing to 1
        self._waves = []
        for _ in range(3):  # dx, dy, roll
            f = rng.uniform([0.05, 0.11, 0.21], [0.09, 0.17, 0.3])
            ph = rng.uniform(0, 2 * math.pi, 3)
            a = rng.uniform(0.5, 1.0, 3)
            self._waves.append((f, ph, a / a.sum()))
        self._extend(first=rng.uniform(0.8, 2.5))

    def _extend(self, first: float | None = None, until: float = 0.0) -> None:
        t = first if first is not None else self._horizon
        while t <= until + 10.0:
            dur = float(self._rng.uniform(0.15, 0.25))
            self._events.append((t, dur))
            if self._rng.random() < 0.1:  # a double blink now and then
                t2 = t + dur + float(self._rng.uniform(0.08, 0.15))
                dur2 = float(self._rng.uniform(0.15, 0.2))
                self._events.append((t2, dur2))
                t = t2 + dur2
            t += float(self._rng.uniform(2.0, 6.0))
        self._horizon = t

    def blink_at(self, time_s: float) -> float:
        if not self.blinks or time_s < 0:
            return 0.0
        if time_s + 1.0 > self._horizon:
            self._extend(until=time_s)
        for start, dur in self._events:
            if start > time_s:
                break
            x = (time_s - start) / dur
            if 0.0 <= x < 1.0:
                close = 0.4
                p = x / close if x < close else 1.0 - (x - close) / (1.0 - close)
                return float(p * p * (3.0 - 2.0 * p))  # smoothstep ease in and out
        return 0.0

    def sway_at(self, time_s: float) -> tuple[float, float, float]:
        if not self.sway:
            return (0.0, 0.0, 0.0)
        out = []
        for (f, ph, a), amp in zip(self._waves, (self.sway_px, 0.6 * self.sway_px, self.roll_deg)):
            out.append(float(amp * np.sum(a * np.sin(2 * math.pi * f * time_s + ph))))
        return out[0], out[1], out[2]

    def at(self, time_s: float) -> tuple[float, tuple[float, float, float]]:
        return self.blink_at(time_s), self.sway_at(time_s)

    def frame(self, index: int) -> tuple[float, tuple[float, float, float]]:
        """``at`` for frame ``index`` at this generator's fps."""
        return self.at(index / self.fps)
