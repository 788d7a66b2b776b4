"""Landmark sets and the motion model of the `mesh` renderer.

Everything here works on MediaPipe FaceMesh landmarks (478 refined points, pixels) and returns
target positions for the mesh points; ``warp.py`` turns source/target points into a warp.

The mesh points are: the 468 face landmarks (irises excluded: they live inside the eye opening,
which collapses in a blink), two extra rows inside the mouth (the interior split in an upper half
that follows the upper lip and a lower half that follows the lower lip), and two rings around the
face (ring 1 moves with the head, ring 2 is fixed and bounds the region that changes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engines.face import EYE_OUTER, INNER_LIP_PAIRS

N_FACE = 468  # landmarks 468..477 are the irises

# inner lip contours, corner to corner (image left to image right), paired column by column
LIP_UPPER_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LIP_LOWER_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
LIP_UPPER_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LIP_LOWER_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
# the pairs FaceMesh's opening measure uses, as indices into the inner contours above
MEASURED_PAIRS = tuple(LIP_UPPER_INNER.index(u) for u, _ in INNER_LIP_PAIRS)
assert all(LIP_LOWER_INNER[i] == d for i, (_, d) in zip(MEASURED_PAIRS, INNER_LIP_PAIRS))

FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400,
             377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)

# eyelids, corner to corner, paired column by column (inner columns only; corners do not move)
EYES = (
    # upper lid, lower lid, skin ring above the upper lid, skin ring below the lower lid
    ((246, 161, 160, 159, 158, 157, 173), (7, 163, 144, 145, 153, 154, 155),
     (247, 30, 29, 27, 28, 56, 190), (25, 110, 24, 23, 22, 26, 112)),
    ((466, 388, 387, 386, 385, 384, 398), (249, 390, 373, 374, 380, 381, 382),
     (467, 260, 259, 257, 258, 286, 414), (255, 339, 254, 253, 252, 256, 341)),
)
EYE_MEASURE_PAIRS = ((159, 145), (386, 374))

N_PAIRS = len(LIP_UPPER_INNER) - 2  # inner columns (corners excluded)
MID_UP = N_FACE                      # mesh indices of the interior rows
MID_LOW = N_FACE + N_PAIRS
RING1 = N_FACE + 2 * N_PAIRS
RING2 = RING1 + len(FACE_OVAL)
N_POINTS = RING2 + len(FACE_OVAL)


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@dataclass
class MouthFrame:
    """A frame aligned with the mouth: origin at the inner-lip centre, x towards landmark 308."""

    origin: np.ndarray  # (2,)
    axis_x: np.ndarray  # (2,) unit
    axis_y: np.ndarray  # (2,) unit, pointing down the face

    def to_local(self, points: np.ndarray) -> np.ndarray:
        d = points[..., :2] - self.origin
        return np.stack([d @ self.axis_x, d @ self.axis_y], axis=-1)

    def to_image_vec(self, local: np.ndarray) -> np.ndarray:
        return local[..., :1] * self.axis_x + local[..., 1:2] * self.axis_y

    @classmethod
    def of(cls, points: np.ndarray) -> "MouthFrame":
        left, right = points[LIP_UPPER_INNER[0], :2], points[LIP_UPPER_INNER[-1], :2]
        ax = right - left
        ax = ax / max(float(np.linalg.norm(ax)), 1e-6)
        ay = np.array([-ax[1], ax[0]])
        origin = 0.5 * (points[13, :2] + points[14, :2])
        return cls(origin.astype(np.float64), ax.astype(np.float64), ay.astype(np.float64))


@dataclass
class MouthRest:
    """The source mouth, measured once per face (in mouth-frame coordinates)."""

    frame: MouthFrame
    scale: float           # outer eye-corner distance, px
    half_width: float      # inner corner half distance, px
    pair_x: np.ndarray     # (N_PAIRS,) x of each inner column
    rest_gap: np.ndarray   # (N_PAIRS,) lower - upper inner lip, px (>= 0)
    rest_opening: float    # mouth_opening() of the source, in face-scale units
    mid_x: np.ndarray      # mid-lip line: x samples (corners included), sorted
    mid_y: np.ndarray
    up_outer_y: np.ndarray  # outer upper lip y at mid_x
    low_outer_y: np.ndarray  # outer lower lip y at mid_x
    local: np.ndarray      # (N_FACE, 2) all face landmarks in the mouth frame
    upper_side: np.ndarray  # (N_FACE,) bool: the point belongs to the upper face half
    profile: np.ndarray    # (N_PAIRS,) opening profile across the mouth, mean 1 over measured pairs


def measure_rest(points: np.ndarray, scale: float, rest_opening: float) -> MouthRest:
    frame = MouthFrame.of(points)
    local = frame.to_local(points[:N_FACE])
    up = local[list(LIP_UPPER_INNER)]
    low = local[list(LIP_LOWER_INNER)]
    half_width = max(0.5 * float(up[-1, 0] - up[0, 0]), 1e-3)
    pair_x = 0.5 * (up[1:-1, 0] + low[1:-1, 0])
    rest_gap = np.maximum(low[1:-1, 1] - up[1:-1, 1], 0.0)
    mid = 0.5 * (up + low)
    order = np.argsort(mid[:, 0])
    mid_x, mid_y = mid[order, 0], mid[order, 1]
    uo = local[list(LIP_UPPER_OUTER)]
    lo = local[list(LIP_LOWER_OUTER)]
    up_outer_y = np.interp(mid_x, *_sorted(uo))
    low_outer_y = np.interp(mid_x, *_sorted(lo))
    upper_side = local[:, 1] < np.interp(local[:, 0], mid_x, mid_y)
    upper_side[list(LIP_UPPER_INNER)] = True
    upper_side[list(LIP_LOWER_INNER)] = False
    u = np.clip(pair_x / half_width, -1, 1)
    profile = np.sqrt(np.maximum(1.0 - u * u, 0.0)) + 0.05
    profile = profile / profile[list(MEASURED_PAIRS)].mean()
    return MouthRest(frame, scale, half_width, pair_x, rest_gap, rest_opening, mid_x, mid_y,
                     up_outer_y, low_outer_y, local, upper_side, profile)


def _sorted(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    o = np.argsort(pts[:, 0])
    return pts[o, 0], pts[o, 1]


def target_gaps(rest: MouthRest, open_: float, width: float, closure: float) -> np.ndarray:
    """Inner-lip gap per column (px) for the wanted parameters; equals the rest gaps when ``open_``
    is the rest opening, and its mean over the measured pairs is ``open_`` x 0.35 x scale."""
    from engines.mouth import OPENING_AT_FULL

    g = max(open_, 0.0) * OPENING_AT_FULL * rest.scale * (1.0 - float(np.clip(closure, 0, 1)))
    g0 = rest.rest_opening * rest.scale  # the measure's own (euclidean) rest gap
    if g <= g0:
        return rest.rest_gap * (g / g0 if g0 > 1e-6 else 0.0)
    u = np.clip(rest.pair_x / rest.half_width, -1, 1)
    # spread lips ("ee") open flatter, rounded lips ("oo") rounder
    expo = 0.5 - 0.2 * float(np.clip(width, -1, 1))
    prof = np.maximum(1.0 - u * u, 0.0) ** expo + 0.05
    prof = prof / prof[list(MEASURED_PAIRS)].mean()
    return rest.rest_gap + (g - g0) * prof


def mouth_displacement(rest: MouthRest, gaps: np.ndarray, width: float, closure: float
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Displacement (mouth-frame dx, dy) of every face landmark, and of the two interior rows
    (returned second, (2 * N_PAIRS, 2) as target positions in the mouth frame)."""
    s = rest.scale
    x, y = rest.local[:, 0], rest.local[:, 1]
    change = gaps - rest.rest_gap
    centre = int(N_PAIRS // 2)
    c_change = float(change[centre])
    # share of the upper lip in the gap change; the jaw and lower lip carry the rest. Closing a
    # mouth that was open in the source is mostly the jaw rising: with an even split (0.5) the
    # upper lip was dragged down into a V and FaceMesh still read the result as open (the
    # rendered opening fell and rose again as `open` went 0 -> 0.4 on wide-open sources)
    alpha = 0.22 if c_change >= 0 else 0.2
    xs = np.concatenate([[-rest.half_width], rest.pair_x, [rest.half_width]])
    cs = np.concatenate([[0.0], change, [0.0]])
    change_x = np.interp(x, xs, cs, left=0.0, right=0.0)
    # the mouth corners follow the jaw a little
    jaw_lip = (1.0 - alpha) * c_change
    corner = 0.3 * jaw_lip
    ax = np.abs(x)
    beyond = np.maximum(ax - rest.half_width, 0.0)
    w_corner = np.clip(ax / rest.half_width, 0, 1) ** 2 * np.exp(-(beyond / (0.3 * s)) ** 2)
    up_outer = np.interp(x, rest.mid_x, rest.up_outer_y)
    low_outer = np.interp(x, rest.mid_x, rest.low_outer_y)
    dy = np.zeros_like(x)
    dx = np.zeros_like(x)

    up = rest.upper_side
    d_up = np.maximum(up_outer - y, 0.0)  # distance above the upper lip
    decay_up = np.exp(-(d_up / (0.12 * s)) ** 2)
    dy[up] = ((-alpha * change_x + corner * w_corner) * decay_up)[up]

    low = ~up
    d_low = np.maximum(y - low_outer, 0.0)  # distance below the lower lip
    lip_low = (1.0 - alpha) * change_x + corner * w_corner
    jaw = 1.05 * jaw_lip * np.exp(-(x / (0.6 * s)) ** 2)
    w = smoothstep(0.0, 0.25 * s, d_low)
    # far below the chin (none of the landmarks) nothing moves; the rings take care of that
    dy[low] = (lip_low * (1.0 - w) + jaw * w)[low]

    # lip width: scale x about the mouth centre near the mouth; rounding also thickens the lips
    wd = float(np.clip(width, -1, 1))
    d_out = np.where(up, d_up, d_low)
    near = np.exp(-(beyond / (0.3 * s)) ** 2) * np.exp(-(d_out / (0.2 * s)) ** 2)
    dx += wd * 0.16 * x * near
    in_lip = (d_out <= 0) & ~np.isin(np.arange(N_FACE), LIP_UPPER_INNER + LIP_LOWER_INNER)
    rel = y - np.interp(x, rest.mid_x, rest.mid_y)
    # lips pressed together get thinner; rounded (pouted) lips fuller
    thick = (-0.12 * float(np.clip(closure, 0, 1)) - 0.12 * min(wd, 0.0)) * rel
    dy += np.where(in_lip, thick, thick * 0.0)
    # the outer lip edges carry the thickness change smoothly into the skin around
    edge_rel = np.where(up, up_outer, low_outer) - np.interp(x, rest.mid_x, rest.mid_y)
    dy += np.where(~in_lip & (d_out > 0),
                   (-0.12 * float(np.clip(closure, 0, 1)) - 0.12 * min(wd, 0.0)) * edge_rel
                   * np.exp(-(d_out / (0.1 * s)) ** 2) * np.exp(-(beyond / (0.2 * s)) ** 2), 0.0)

    disp = np.stack([dx, dy], axis=1)
    # closing: the two inner points of a column meet at one point (no slivers along the seam)
    up_i = np.array(LIP_UPPER_INNER[1:-1])
    low_i = np.array(LIP_LOWER_INNER[1:-1])
    # per column: the fraction of the rest gap kept (1 when opening, or when there is no rest gap)
    k = np.where(rest.rest_gap > 1e-3, np.minimum(gaps / np.maximum(rest.rest_gap, 1e-3), 1.0), 1.0)
    shut = (1.0 - k)
    mx = 0.5 * (rest.local[up_i, 0] + disp[up_i, 0] + rest.local[low_i, 0] + disp[low_i, 0])
    for idx in (up_i, low_i):
        disp[idx, 0] += (mx - (rest.local[idx, 0] + disp[idx, 0])) * shut
    # the interior rows: each half of the rest interior keeps its size while the mouth opens wider,
    # and shrinks in proportion when it closes
    src_up, src_low = rest.local[up_i], rest.local[low_i]
    tgt_up, tgt_low = src_up + disp[up_i], src_low + disp[low_i]
    mid = 0.5 * (src_up + src_low)
    # a source mouth that is barely open (a sliver of teeth) does not keep its interior when the
    # mouth opens wider: it fades out continuously and the synthesised interior takes over
    if rest.rest_opening < 0.08:
        keep = np.clip(1.0 - (gaps - rest.rest_gap) / (0.06 * s), 0.0, 1.0)
    else:
        keep = np.ones_like(gaps)
    mid_up = tgt_up + (mid - src_up) * (k * keep)[:, None]
    mid_low = tgt_low + (mid - src_low) * (k * keep)[:, None]
    if np.any(k < 1.0):  # closing: both rows meet exactly
        meet = 0.5 * (mid_up + mid_low)
        sel = (k < 1.0)[:, None]
        mid_up = np.where(sel, meet, mid_up)
        mid_low = np.where(sel, meet, mid_low)
    return disp, np.concatenate([mid_up, mid_low])


def eye_targets(points: np.ndarray, blink: float) -> dict[int, np.ndarray]:
    """Target positions of the eyelid landmarks for ``blink`` (0 open .. 1 closed)."""
    out: dict[int, np.ndarray] = {}
    b = float(np.clip(blink, 0, 1))
    if b <= 0:
        return out
    for upper, lower, ring_up, ring_low in EYES:
        for u, l, ru, rl in zip(upper, lower, ring_up, ring_low):
            pu, pl = points[u, :2], points[l, :2]
            meet = pu + 0.9 * (pl - pu)
            du = (meet - pu) * b
            dl = (meet - pl) * b
            out[u] = pu + du
            out[l] = pl + dl
            out[ru] = points[ru, :2] + 0.45 * du
            out[rl] = points[rl, :2] + 0.35 * dl
    return out


def eye_gap(landmarks: np.ndarray) -> float:
    """Mean vertical eyelid gap (159-145, 386-374) over the eye distance."""
    a, b = EYE_OUTER
    s = float(np.linalg.norm(landmarks[a, :2] - landmarks[b, :2]))
    g = [np.linalg.norm(landmarks[u, :2] - landmarks[d, :2]) for u, d in EYE_MEASURE_PAIRS]
    return float(np.mean(g) / max(s, 1e-6))
