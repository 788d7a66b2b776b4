"""The `mesh` backend's renderer: a piecewise-affine warp of the face driven by mouth parameters,
a synthesised mouth interior, blinks, and the head's pose and brows.

``prepare_face`` (prepare.py) caches what one image and its landmarks allow; ``render_mouth``
builds the target mesh for one frame (targets.py), warps the region that moves (warp.py) and
draws the mouth interior and the seams over it (interior.py).
"""

from __future__ import annotations

import numpy as np

from engines.head_motion.model import HeadPose
from engines.mesh import geometry as G
from engines.mesh.interior import interior, seam
from engines.mesh.prepare import PreparedFace
from engines.mesh.targets import STILL, targets
from engines.mesh.warp import warp
from engines.mouth import MouthParams


def render_mouth(face: PreparedFace, params: MouthParams, pose: HeadPose = STILL) -> np.ndarray:
    """One frame: the mouth as ``params`` say, the eyes, brows and head as ``pose`` says."""
    out = face.image.copy()
    blink = pose.blink
    tgt = targets(face.src, face.rest, params, face.src, pose, face.rig)
    moved = np.abs(tgt - face.src).max(axis=1) > 1e-4
    tri = face.triangles[moved[face.triangles].any(axis=1)]
    if len(tri):
        warp(face, tgt, tri, blink, out)
    up_in = tgt[list(G.LIP_UPPER_INNER)]
    low_in = tgt[list(G.LIP_LOWER_INNER)]
    mid_up = tgt[G.MID_UP: G.MID_UP + G.N_PAIRS]
    mid_low = tgt[G.MID_LOW: G.MID_LOW + G.N_PAIRS]
    if float(np.max(np.linalg.norm(mid_low - mid_up, axis=1))) > 0.05:
        interior(face, up_in, low_in, mid_up, mid_low, out)
    rest_gap = float(face.rest.rest_gap[list(G.MEASURED_PAIRS)].mean())
    if rest_gap > 0.5:
        gap = float(np.linalg.norm(low_in[1:-1] - up_in[1:-1], axis=1)[list(G.MEASURED_PAIRS)].mean())
        if gap < rest_gap:
            seam(face, up_in, low_in, 1.0 - gap / rest_gap, out)
    if blink > 0.3:
        for (upper, lower, _, _), corners in zip(G.EYES, ((33, 133), (263, 362))):
            lid = np.concatenate([tgt[[corners[0]]], 0.5 * (tgt[list(upper)] + tgt[list(lower)]), tgt[[corners[1]]]])
            seam(face, lid, lid, (blink - 0.3) / 0.7, out, colour=face.colours.lash, width=0.02)
    return out
