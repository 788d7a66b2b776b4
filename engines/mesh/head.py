"""The whole head of the `mesh` renderer: a 3-D rotation and shift of the face's mesh points, and
the brows lifted (``engines.head_motion.model.HeadPose`` gives the amounts).

The face's points carry FaceMesh's depth, so a turn or a nod moves the nose more than the cheeks,
as a real head does; the ring around the face (hair, ears, neck) follows its nearest face-outline
point and the outer ring stays put, so the picture stretches smoothly in between and has no seam.
Brows move along the face's own up direction, the forehead above them less with distance, the
eyelids not at all: the measure of ``head_motion/tracks.py`` reads the lift back as given
(``BROW_GAIN``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engines.head_motion.model import HeadPose
from engines.head_motion.tracks import BROWS, UPPER_LIDS, rotation_matrix
from engines.mesh import geometry as G

BROW_POINTS = BROWS + (46, 53, 52, 65, 55, 276, 283, 282, 295, 285)  # upper and lower brow edges
BROW_REACH = 0.3  # eye distances: how far around the brows the skin follows them
LID_CLEAR = (0.05, 0.2)  # eye distances above the upper lids: nothing moves below, all above
# FaceMesh reads a lift of the brow points back as about half of it (0.025 of 0.05 eye distances on
# the bundled portrait, tests/test_head_motion.py): lift twice as far, so that the brow height
# measured on our output means what it means on a real speaker's video
BROW_GAIN = 2.0


def up_direction(points: np.ndarray) -> np.ndarray:
    """The face's up in the image (unit), perpendicular to the outer eye corners' line."""
    axis = points[263, :2] - points[33, :2]
    axis = axis / max(float(np.linalg.norm(axis)), 1e-6)
    return np.array([axis[1], -axis[0]])


def brow_lift(points: np.ndarray, scale: float) -> np.ndarray:
    """(N_POINTS, 2): how far each mesh point moves, in pixels, for a brow lift (as FaceMesh reads it) of one eye distance."""
    lift = np.zeros((G.N_POINTS, 2))
    face = points[: G.N_FACE, :2].astype(np.float64)
    up = up_direction(points)
    distance = np.min(np.linalg.norm(face[:, None, :] - face[list(BROW_POINTS)][None, :, :], axis=2), axis=1)
    height = (face - face[list(UPPER_LIDS)].mean(axis=0)) @ up
    weight = np.exp(-(distance / (BROW_REACH * scale)) ** 2) * G.smoothstep(LID_CLEAR[0] * scale, LID_CLEAR[1] * scale, height)
    lift[: G.N_FACE] = BROW_GAIN * weight[:, None] * up[None, :] * scale
    return lift


def mesh_depth(points: np.ndarray) -> np.ndarray:
    """(N_POINTS,) FaceMesh depth (pixels) of each mesh point: the landmarks' own, the mouth's interior
    rows the lips', each ring point its face-outline point's."""
    z = np.zeros(G.N_POINTS)
    z[: G.N_FACE] = points[: G.N_FACE, 2]
    z[G.MID_UP: G.MID_UP + 2 * G.N_PAIRS] = float(points[list(G.LIP_UPPER_INNER), 2].mean())
    oval = points[list(G.FACE_OVAL), 2]
    z[G.RING1: G.RING2] = oval
    z[G.RING2:] = oval
    return z


def pivot(points: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The head's centre of rotation: the face's centre in the image, at the depth of its outline."""
    return np.array([centre[0], centre[1], float(points[list(G.FACE_OVAL), 2].mean())])


def move_head(tgt: np.ndarray, depth: np.ndarray, centre3: np.ndarray, pose: HeadPose, scale: float) -> np.ndarray:
    """``tgt[:RING2]`` (the face and the ring that follows it) rotated about ``centre3`` and shifted."""
    head = np.concatenate([tgt[: G.RING2], depth[: G.RING2, None]], axis=1) - centre3
    turned = head @ rotation_matrix(pose.yaw, pose.pitch, pose.roll).T
    out = tgt.copy()
    out[: G.RING2] = turned[:, :2] + centre3[:2] + np.array([pose.tx, pose.ty]) * scale
    return out


@dataclass(frozen=True)
class HeadRig:
    """What moving one face's head needs, made once per face (``rig_of``)."""

    depth: np.ndarray  # (N_POINTS,)
    lift: np.ndarray  # (N_POINTS, 2) brow lift per eye distance of lift, px
    pivot: np.ndarray  # (3,)
    scale: float  # eye distance, px

    def pose(self, tgt: np.ndarray, pose: HeadPose) -> np.ndarray:
        """``tgt`` with the brows lifted, then the head turned and shifted."""
        if pose.brow:
            tgt = tgt + pose.brow * self.lift
        if pose.turns:
            tgt = move_head(tgt, self.depth, self.pivot, pose, self.scale)
        return tgt


def rig_of(points: np.ndarray, centre: np.ndarray, scale: float) -> HeadRig:
    return HeadRig(mesh_depth(points), brow_lift(points, scale), pivot(points, centre), scale)
