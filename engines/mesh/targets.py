"""The target mesh for one frame of the `mesh` renderer: the mesh points moved by the mouth
parameters, a blink, and the head's pose and brows (the motion models are ``geometry.py``'s and
``head.py``'s).
"""

from __future__ import annotations

import numpy as np

from engines.head_motion.model import HeadPose
from engines.mesh import geometry as G
from engines.mesh.head import HeadRig
from engines.mouth import MouthParams

STILL = HeadPose()


def targets(src: np.ndarray, rest: G.MouthRest, params: MouthParams, pts: np.ndarray,
            pose: HeadPose = STILL, rig: HeadRig | None = None) -> np.ndarray:
    """The mesh points for ``params`` and ``pose`` (its blink always; its head and brows given a ``rig``)."""
    tgt = src.copy()
    gaps = G.target_gaps(rest, params.open, params.width, params.closure)
    disp_local, rows = G.mouth_displacement(rest, gaps, params.width, params.closure)
    frame = rest.frame
    disp = frame.to_image_vec(disp_local)
    tgt[: G.N_FACE] += disp
    tgt[G.MID_UP: G.MID_UP + 2 * G.N_PAIRS] = frame.origin + frame.to_image_vec(rows)
    # ring 1 (neck, hair) follows the nearest face-oval point a little: the chin's drop spreads out
    tgt[G.RING1: G.RING2] += 0.35 * disp[list(G.FACE_OVAL)]
    for idx, p in G.eye_targets(pts, pose.blink).items():
        tgt[idx] = p
    if rig is not None and pose.moves:
        tgt = rig.pose(tgt, pose)
    return tgt
