"""The target mesh for one frame of the `mesh` renderer: the mesh points moved by the mouth
parameters, a blink and a slight head sway (the motion model itself is ``geometry.py``'s).
"""

from __future__ import annotations

import math

import numpy as np

from engines.mesh import geometry as G
from engines.mouth import MouthParams


def targets(src: np.ndarray, rest: G.MouthRest, centre: np.ndarray, params: MouthParams,
            blink: float, sway: tuple[float, float, float], pts: np.ndarray) -> np.ndarray:
    tgt = src.copy()
    gaps = G.target_gaps(rest, params.open, params.width, params.closure)
    disp_local, rows = G.mouth_displacement(rest, gaps, params.width, params.closure)
    frame = rest.frame
    disp = frame.to_image_vec(disp_local)
    tgt[: G.N_FACE] += disp
    tgt[G.MID_UP: G.MID_UP + 2 * G.N_PAIRS] = frame.origin + frame.to_image_vec(rows)
    # ring 1 (neck, hair) follows the nearest face-oval point a little: the chin's drop spreads out
    tgt[G.RING1: G.RING2] += 0.35 * disp[list(G.FACE_OVAL)]
    for idx, p in G.eye_targets(pts, blink).items():
        tgt[idx] = p
    dx, dy, roll = sway
    if dx or dy or roll:
        a = math.radians(roll)
        c, s_ = math.cos(a), math.sin(a)
        rot = np.array([[c, -s_], [s_, c]])
        head = tgt[: G.RING2] - centre
        tgt[: G.RING2] = head @ rot.T + centre + np.array([dx, dy])
    return tgt
