"""Real head motion, brows and eyelids, measured with FaceMesh on talking clips.

Per video frame (NaN without a face), all relative to the clip's own rest (its median), so that
a clip's camera angle and a face's build drop out:

* ``yaw``, ``pitch``, ``roll`` (degrees): the rigid rotation (Umeyama, no scale) that takes the
  clip's median face to this frame's, fitted on landmarks that do not move when one speaks or
  frowns (``gaussian.rig.RIGID``: forehead, nose, eye corners, temples), in FaceMesh's 3-D
  coordinates (x, y pixels, z relative depth).
  Yaw turns the face towards image right, pitch nods the chin down, roll tilts clockwise.
* ``tx``, ``ty``: where those landmarks' centre is, in eye distances (33-263).
* ``brow``: how far the brows are above the eyes, in the pose-aligned face, in eye distances.
* ``eyelid``: the eye opening (lid gap over eye width), aligned likewise; a blink is a dip.

:func:`motion_track` caches a clip's track under ``~/.cache/lipsync-stream/motion-tracks/``, keyed
by the file's content hash and :data:`TRACK_VERSION`; the clips are read in place.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from engines.audio2mouth.clips import content_hash
from engines.gaussian.rig import RIGID, umeyama  # the landmarks that move with the skull only

CACHE_DIR = Path(os.environ.get("LIPSYNC_CACHE", Path.home() / ".cache" / "lipsync-stream")) / "motion-tracks"
TRACK_VERSION = "facemesh-0.10.21-umeyama-v2"  # change when the measure changes: old caches are ignored
CHANNELS = ("yaw", "pitch", "roll", "tx", "ty", "brow", "eyelid")

BROWS = (70, 63, 105, 66, 107, 300, 293, 334, 296, 336)  # the brows' upper edge, both sides
UPPER_LIDS = (159, 386)
LOWER_LIDS = (145, 374)
EYE_CORNERS = ((33, 133), (263, 362))
EYE_OUTER = (33, 263)


def eye_distance(landmarks: np.ndarray) -> float:
    return float(np.linalg.norm(landmarks[EYE_OUTER[0], :2] - landmarks[EYE_OUTER[1], :2]))


def euler_degrees(rotation: np.ndarray) -> tuple[float, float, float]:
    """(yaw about y, pitch about x, roll about z), degrees, for R = Rz(roll) Ry(yaw) Rx(pitch)."""
    yaw = np.degrees(np.arcsin(np.clip(-rotation[2, 0], -1.0, 1.0)))
    pitch = np.degrees(np.arctan2(rotation[2, 1], rotation[2, 2]))
    roll = np.degrees(np.arctan2(rotation[1, 0], rotation[0, 0]))
    return float(yaw), float(pitch), float(roll)


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R = Rz(roll) Ry(yaw) Rx(pitch) from degrees (the inverse of :func:`euler_degrees`)."""
    y, p, r = np.radians([yaw, pitch, roll])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ ry @ rx


def normalised(landmarks: np.ndarray) -> np.ndarray:
    """Landmarks centred on the rigid set's centre and scaled to one eye distance."""
    points = landmarks[:, :3].astype(np.float64)
    return (points - points[list(RIGID)].mean(axis=0)) / max(eye_distance(landmarks), 1e-6)


def face_measures(aligned: np.ndarray) -> tuple[float, float]:
    """(brow height over the eyes, eye opening) of pose-aligned, normalised landmarks."""
    eye_line = aligned[list(UPPER_LIDS), 1].mean()
    brow = float(eye_line - aligned[list(BROWS), 1].mean())  # y points down
    gaps = [np.linalg.norm(aligned[u, :2] - aligned[d, :2]) / max(np.linalg.norm(aligned[a, :2] - aligned[b, :2]), 1e-6)
            for u, d, (a, b) in zip(UPPER_LIDS, LOWER_LIDS, EYE_CORNERS)]
    return brow, float(np.mean(gaps))


def measure(landmarks: list[np.ndarray | None]) -> dict[str, np.ndarray]:
    """The motion channels (CHANNELS) of one clip's landmarks, relative to its median face."""
    found = [normalised(lm) for lm in landmarks if lm is not None]
    out = {name: np.full(len(landmarks), np.nan) for name in CHANNELS}
    if not found:
        return out
    reference = np.median(np.stack(found), axis=0)
    ref_rigid = reference[list(RIGID)]
    centres = []
    for n, lm in enumerate(landmarks):
        if lm is None:
            continue
        points = normalised(lm)
        _, rotation, _ = umeyama(ref_rigid, points[list(RIGID)], with_scale=False)
        out["yaw"][n], out["pitch"][n], out["roll"][n] = euler_degrees(rotation)
        out["brow"][n], out["eyelid"][n] = face_measures(points @ rotation)  # undo the pose: p R = R^T p
        centre = lm[list(RIGID), :2].astype(np.float64).mean(axis=0) / max(eye_distance(lm), 1e-6)
        centres.append((n, centre))
    for n, centre in centres:
        out["tx"][n], out["ty"][n] = centre
    for name in ("yaw", "pitch", "roll", "tx", "ty", "brow"):
        out[name] -= np.nanmedian(out[name])
    return out


def landmark_track(path: Path) -> tuple[list[np.ndarray | None], np.ndarray]:
    """FaceMesh landmarks (tracking) per frame of a video, and the frame times (s)."""
    from engines.lipsync_measures import mouth_track

    _, landmarks, times = mouth_track(path)
    return landmarks, times


def motion_track(path: Path, cache: Path | None = CACHE_DIR) -> dict[str, np.ndarray]:
    """The cached motion track of one clip: ``times`` and every channel of CHANNELS."""
    path = Path(path)
    cached = cache / f"{content_hash(path)}.{TRACK_VERSION}.npz" if cache else None
    if cached is not None and cached.exists():
        return dict(np.load(cached))
    landmarks, times = landmark_track(path)
    track = {"times": times, **measure(landmarks)}
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cached.with_suffix(".tmp.npz"), **track)
        os.replace(cached.with_suffix(".tmp.npz"), cached)
    return track
