"""How a head moves, measured the same way on real speakers and on our output (issue 20).

All take per-frame tracks (``tracks.py`` channels) at frame times ``times`` and the clip's
16 kHz audio; NaNs (no face) are filled by interpolation first.

* ``rotation_speed``: degrees per second of the head rotation between frames (yaw, pitch, roll),
  after a 9-frame (0.36 s) moving average: FaceMesh's pose jitters from frame to frame, and more
  so while the mouth moves (on our own output with the head held still it read 11.7 deg/s through
  a 5-frame average, more than the real speakers' 8.6); the average keeps the head's sway and
  nods (mostly under 1.5 Hz) and drops most of the jitter;
* ``energy_coupling``: the correlation, over 1 s windows, of head motion energy (mean squared
  rotation speed) with speech energy (``prosody.energy``);
* ``blink_times``: where the eye opening dips below 70 % of the clip's median for a short while;
* ``brow_rise``: the brow height in the 0.4 s after stressed syllables (the strongest 20 % of the
  energy onsets) minus the clip's median brow height, in eye distances.
"""

from __future__ import annotations

import numpy as np

from engines.head_motion.prosody import energy, prosody
from engines.lipsync_measures import fill_nan

WINDOW_S = 1.0


SMOOTH_FRAMES = 9


def smoothed(values: np.ndarray, frames: int = SMOOTH_FRAMES) -> np.ndarray:
    """A centred moving average (NaNs filled first; the ends repeat their value)."""
    filled = fill_nan(values)
    half = frames // 2
    padded = np.concatenate([np.repeat(filled[:1], half), filled, np.repeat(filled[-1:], half)])
    return np.convolve(padded, np.ones(frames) / frames, mode="valid")


def rotation_speed(track: dict[str, np.ndarray]) -> np.ndarray:
    times = track["times"]
    rot = np.stack([smoothed(track[c]) for c in ("yaw", "pitch", "roll")], axis=1)
    dt = np.maximum(np.diff(times), 1e-3)
    return np.linalg.norm(np.diff(rot, axis=0), axis=1) / dt


def energy_coupling(track: dict[str, np.ndarray], pcm: np.ndarray) -> float | None:
    """Correlation of motion energy and speech energy over 1 s windows (None if under 3 windows)."""
    times = track["times"]
    speed = rotation_speed(track)
    mid = 0.5 * (times[1:] + times[:-1])
    speech = energy(np.asarray(pcm, np.float64), mid)
    edges = np.arange(times[0], times[-1] + 1e-9, WINDOW_S)
    motion_w, speech_w = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (mid >= lo) & (mid < hi)
        if inside.sum() >= 5:
            motion_w.append(float(np.mean(speed[inside] ** 2)))
            speech_w.append(float(np.mean(speech[inside])))
    if len(motion_w) < 3 or np.std(motion_w) < 1e-12 or np.std(speech_w) < 1e-12:
        return None
    return float(np.corrcoef(motion_w, speech_w)[0, 1])


def blink_times(track: dict[str, np.ndarray]) -> np.ndarray:
    lid = fill_nan(track["eyelid"])
    times = track["times"]
    if not np.any(lid > 0):
        return np.zeros(0)
    shut = lid < 0.7 * np.median(lid)
    starts = np.flatnonzero(shut & ~np.concatenate([[False], shut[:-1]]))
    found: list[float] = []
    for start in starts:
        if not found or times[start] - found[-1] > 0.25:
            found.append(float(times[start]))
    return np.asarray(found)


def stressed_times(pcm: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Frame times of the strongest 20 % of energy onsets (local peaks) in speech."""
    onset = prosody(np.asarray(pcm, np.float64), times)[:, 1]
    peaks = np.flatnonzero((onset[1:-1] > onset[:-2]) & (onset[1:-1] >= onset[2:]) & (onset[1:-1] > 0.05)) + 1
    if not len(peaks):
        return np.zeros(0)
    strong = peaks[onset[peaks] >= np.percentile(onset[peaks], 80)]
    return times[strong]


def brow_rise(track: dict[str, np.ndarray], pcm: np.ndarray) -> float | None:
    times = track["times"]
    brow = fill_nan(track["brow"])
    stresses = stressed_times(pcm, times)
    if not len(stresses):
        return None
    after = np.zeros(len(times), bool)
    for t in stresses:
        after |= (times >= t) & (times < t + 0.4)
    return float(np.mean(brow[after]) - np.median(brow))


def clip_measures(track: dict[str, np.ndarray], pcm: np.ndarray) -> dict[str, float | None]:
    """Every measure of one clip (blink interval: its length over its blinks, None without one)."""
    times = track["times"]
    blinks = blink_times(track)
    seconds = float(times[-1] - times[0]) if len(times) > 1 else 0.0
    speed = rotation_speed(track)
    return {
        "seconds": seconds,
        "rotation_speed_median": float(np.median(speed)) if len(speed) else None,
        "rotation_speed_p90": float(np.percentile(speed, 90)) if len(speed) else None,
        "energy_coupling": energy_coupling(track, pcm),
        "blinks": int(len(blinks)),
        "brow_rise": brow_rise(track, pcm),
        "brow_spread": float(np.nanstd(track["brow"])),
    }
