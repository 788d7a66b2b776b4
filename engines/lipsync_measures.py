"""The lip-sync measures of DESIGN.md: mouth-motion agreement and identity kept (SSIM).

One definition, shared by the quality benchmark, the tests and the audio-to-mouth training and
evaluation, so all of them compute exactly the same thing.

Mouth-motion agreement compares two per-frame mouth-opening tracks (the FaceMesh inner-lip
opening, :func:`engines.face.mouth_opening`, or a prediction of it). The rules:

* **Argument order**: ``agreement(output, real)``: the track being judged first, the real
  speaker's second. A positive lag means the output moves *later* than the real mouth.
* **NaN** (a frame where no face was found) is filled by linear interpolation between the
  nearest frames that have a value (the ends repeat the nearest value; a track with no value at
  all becomes zeros) before smoothing, so every frame counts and the smoothing never spreads a
  gap. :func:`pearson` itself expects finite arrays.
* Both tracks are cut to the shorter one, smoothed with a 3-frame moving average
  (:func:`smooth3`), and correlated (Pearson) at lag 0 and at every lag within +-``max_lag``
  frames.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from engines.face import FaceLandmarker, mouth_opening
from engines.media_io import video_frames

NOSE_BRIDGE = 6  # FaceMesh landmark between the eyes: "above the nose" is above this row + margin
NOSE_TIP = 1


def mouth_track(path: Path) -> tuple[np.ndarray, list[np.ndarray | None], np.ndarray]:
    """Inner-lip opening per frame of a video (NaN where no face), the landmarks, and the frame
    times (s, from the stream's timestamps)."""
    openings: list[float] = []
    landmarks: list[np.ndarray | None] = []
    times: list[float] = []
    with FaceLandmarker(tracking=True) as tracker:
        for t, rgb in video_frames(path):
            faces = tracker.faces(rgb)
            times.append(t)
            landmarks.append(faces[0].landmarks if faces else None)
            openings.append(mouth_opening(faces[0].landmarks) if faces else np.nan)
    return np.asarray(openings, np.float64), landmarks, np.asarray(times, np.float64)


def at_times(values: np.ndarray, times: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """A per-frame track read at other frame times (linear; NaNs filled first): a clip recorded
    at a variable frame rate against an output at a constant one."""
    return np.interp(wanted, times, fill_nan(values))


def smooth3(values: np.ndarray) -> np.ndarray:
    """3-frame moving average (each end counts its own frame twice); NaNs are filled first."""
    filled = fill_nan(values)
    padded = np.concatenate([filled[:1], filled, filled[-1:]])
    return (padded[:-2] + padded[1:-1] + padded[2:]) / 3.0


def fill_nan(values: np.ndarray) -> np.ndarray:
    """A float64 copy with every NaN replaced by linear interpolation over the frame index (the
    ends repeat the nearest value); all zeros where no value is finite."""
    out = np.asarray(values, np.float64).copy()
    bad = np.isnan(out)
    if bad.all():
        return np.zeros_like(out)
    if bad.any():
        out[bad] = np.interp(np.flatnonzero(bad), np.flatnonzero(~bad), out[~bad])
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two finite arrays of one length; 0 where either is constant."""
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def agreement(output: np.ndarray, real: np.ndarray, max_lag: int = 5) -> tuple[float, int, float]:
    """(r at lag 0, best lag, r at the best lag) of the smoothed opening curves, both cut to
    the shorter one (NaNs filled first, see the module's rules).

    A positive lag means the output moves later than the real mouth.
    """
    n = min(len(output), len(real))
    out, ref = smooth3(output[:n]), smooth3(real[:n])
    best_lag, best_r = 0, -2.0
    for lag in range(-max_lag, max_lag + 1):
        if lag >= 0:
            r = pearson(out[lag:], ref[: n - lag])
        else:
            r = pearson(out[: n + lag], ref[-lag:])
        if r > best_r:
            best_lag, best_r = lag, r
    return pearson(out, ref), best_lag, best_r


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two greyscale images (Gaussian window, sigma 1.5, as Wang et al. 2004)."""
    x, y = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(image: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(image, (11, 11), 1.5)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    value = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(value.mean())


def upper_face_box(landmarks: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1 of the face above the nose (forehead, eyes, brows)."""
    xy = landmarks[:, :2]
    x0, y0 = np.maximum(xy.min(axis=0), 0)
    x1 = min(float(xy[:, 0].max()), shape[1] - 1)
    y1 = float(xy[NOSE_BRIDGE, 1] + 0.3 * (xy[NOSE_TIP, 1] - xy[NOSE_BRIDGE, 1]))
    return int(x0), int(y0), int(x1), int(y1)


def identity_ssim(frames: list[np.ndarray], base: np.ndarray, landmarks: np.ndarray) -> float:
    """Mean SSIM of the face above the nose between each frame and the base frame."""
    x0, y0, x1, y1 = upper_face_box(landmarks, base.shape)
    reference = cv2.cvtColor(base[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY)
    scores = [ssim(cv2.cvtColor(f[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY), reference) for f in frames]
    return float(np.mean(scores))
