"""The `mesh` renderer's synthesised mouth interior (teeth, cavity, tongue, drawn between the
interior rows) and its seams: the dark line between lips that meet, and between closing eyelids.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from engines.mesh import geometry as G
from engines.mesh.prepare import PreparedFace


def interior(face: PreparedFace, up_in: np.ndarray, low_in: np.ndarray, mid_up: np.ndarray,
             mid_low: np.ndarray, out: np.ndarray) -> None:
    """Draw the mouth interior between the interior rows, anti-aliased, into ``out``."""
    s = face.scale
    h, w = out.shape[:2]
    left, right = up_in[0], up_in[-1]
    ax = right - left
    hw = max(0.5 * float(np.linalg.norm(ax)), 1e-3)
    ax = ax / (2 * hw)
    ay = np.array([-ax[1], ax[0]])
    origin = 0.5 * (left + right)

    every = np.concatenate([up_in, low_in, mid_up, mid_low])
    pad = 2
    x0 = max(int(math.floor(every[:, 0].min())) - pad, 0)
    y0 = max(int(math.floor(every[:, 1].min())) - pad, 0)
    x1 = min(int(math.ceil(every[:, 0].max())) + pad + 1, w)
    y1 = min(int(math.ceil(every[:, 1].max())) + pad + 1, h)
    if x1 <= x0 or y1 <= y0:
        return
    gx = np.arange(x0, x1, dtype=np.float32)[None, :] - origin[0]
    gy = np.arange(y0, y1, dtype=np.float32)[:, None] - origin[1]
    lx = gx * ax[0] + gy * ax[1]
    ly = gx * ay[0] + gy * ay[1]

    def curve(p: np.ndarray, corners: bool) -> np.ndarray:
        if not corners:
            p = np.concatenate([left[None], p, right[None]])
        d = p - origin
        cx, cy = d @ ax, d @ ay
        o = np.argsort(cx)
        return np.interp(lx, cx[o], cy[o]).astype(np.float32)

    y_up, y_low = curve(up_in, True), curve(low_in, True)
    y_mu, y_ml = curve(mid_up, False), curve(mid_low, False)
    aa = max(0.6, 0.01 * s)

    def ramp(d: np.ndarray) -> np.ndarray:
        return np.clip(d / aa + 0.5, 0.0, 1.0)

    u = np.clip(lx / hw, -1.0, 1.0)
    # the region: between the interior rows, half a pixel into the lips to hide the stretched seam
    alpha = ramp(ly - y_mu + 0.5) * ramp(y_ml - ly + 0.5) * ramp(hw - np.abs(lx))
    if float(alpha.max()) <= 0.0:
        return
    col = face.colours
    gap_c = max(float(np.interp(0.0, *_sorted_local(low_in, origin, ax, ay))
                      - np.interp(0.0, *_sorted_local(up_in, origin, ax, ay))), 0.0)
    gap_x = np.maximum(y_low - y_up, 1e-3)
    depth = np.clip((ly - y_up) / gap_x, 0.0, 1.0)
    u2 = u * u
    # cavity: deepest just under the upper teeth and towards the corners
    rgb = col.cavity[None, None, :] * ((0.55 + 0.6 * depth * depth) * (1.0 - 0.5 * u2))[..., None]
    # tongue: a low dome resting behind the lower teeth, dull red, darker towards the back
    th = min(0.45 * gap_c, 0.32 * hw) * np.maximum(1.0 - (u / 0.75) ** 2, 0.0)
    top = y_low - th
    t_a = ramp(ly - top) * float(G.smoothstep(0.05 * s, 0.16 * s, np.float64(gap_c)))
    t_shade = (0.6 + 0.45 * np.clip((ly - top) / max(0.45 * gap_c, 1e-3), 0.0, 1.0)) * (1 - 0.4 * u2)
    rgb = _over(rgb, col.tongue[None, None, :] * t_shade[..., None], t_a)
    # lower teeth: a short band inside the lower lip, mostly in shadow, only when well open
    h_lt = 0.16 * hw * float(G.smoothstep(0.07 * s, 0.2 * s, np.float64(gap_c)))
    lt_top = y_low - h_lt * (1.0 - 0.6 * u2)
    lt_a = ramp(ly - lt_top) * G.smoothstep(0.62, 0.4, np.abs(u)) * float(h_lt > 0.4)
    lt_shade = 0.62 * (1.0 - 0.6 * u2)
    rgb = _over(rgb, col.teeth[None, None, :] * lt_shade[..., None], lt_a)
    # upper teeth: attached to the upper lip, shadowed under it; the side teeth fade into the
    # dark corridor towards the corners
    h_ut = 0.3 * hw
    ut_bot = y_up + h_ut * (1.0 - 0.55 * u2)
    ut_a = ramp(ut_bot - ly) * G.smoothstep(0.78, 0.45, np.abs(u))
    ut_shade = (1.0 - 0.6 * u2) * (0.62 + 0.38 * np.clip((ly - y_up) / (0.35 * h_ut), 0, 1))
    ut_shade = ut_shade * (1.0 - 0.12 * np.clip((ly - ut_bot + 0.25 * h_ut) / (0.25 * h_ut), 0, 1))
    for c in (0.0, 0.19, -0.19, 0.36, -0.36):  # faint gaps between the front teeth
        ut_shade = ut_shade * (1.0 - 0.1 * np.exp(-((lx - c * hw) / (0.8 * aa)) ** 2))
    rgb = _over(rgb, col.teeth[None, None, :] * ut_shade[..., None], ut_a)
    # soft shadow along the inner lip edges
    edge = np.minimum(ly - y_up, y_low - ly)
    rgb = rgb * (1.0 - 0.3 * np.exp(-(np.maximum(edge, 0) / (0.015 * s + 0.4)) ** 2))[..., None]
    patch = out[y0:y1, x0:x1].astype(np.float32)
    a = alpha[..., None]
    out[y0:y1, x0:x1] = np.clip(patch * (1.0 - a) + rgb * a + 0.5, 0, 255).astype(np.uint8)


def seam(face: PreparedFace, up_in: np.ndarray, low_in: np.ndarray, strength: float,
         out: np.ndarray, colour: np.ndarray | None = None, width: float = 0.015) -> None:
    """The dark line between lips that meet (a source mouth that was open has none of its own)."""
    s = face.scale
    line = 0.5 * (up_in + low_in)
    h, w = out.shape[:2]
    r = width * s + 0.6
    pad = int(math.ceil(3 * r)) + 1
    x0 = max(int(math.floor(line[:, 0].min())) - pad, 0)
    y0 = max(int(math.floor(line[:, 1].min())) - pad, 0)
    x1 = min(int(math.ceil(line[:, 0].max())) + pad + 1, w)
    y1 = min(int(math.ceil(line[:, 1].max())) + pad + 1, h)
    if x1 <= x0 or y1 <= y0:
        return
    ss = 4  # draw supersampled, then blur: an anti-aliased, feathered line
    mask = np.zeros(((y1 - y0) * ss, (x1 - x0) * ss), np.uint8)
    pts = np.round((line - [x0, y0]) * ss * 16 + (ss - 1) * 8).astype(np.int32)
    cv2.polylines(mask, [pts], False, 255, max(1, int(round(r * ss))), cv2.LINE_AA, 4)
    a = cv2.resize(mask, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA).astype(np.float32)
    a = cv2.GaussianBlur(a, (0, 0), 0.3 * r + 0.3) / 255.0 * (0.75 * min(max(strength, 0.0), 1.0))
    u = np.linspace(-1, 1, x1 - x0, dtype=np.float32)
    a *= (1.0 - 0.3 * u * u)[None, :]
    colour = face.colours.lip * 0.35 if colour is None else colour
    patch = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = np.clip(patch + (colour - patch) * a[..., None] + 0.5, 0, 255).astype(np.uint8)


def _sorted_local(p: np.ndarray, origin: np.ndarray, ax: np.ndarray, ay: np.ndarray):
    d = p - origin
    cx, cy = d @ ax, d @ ay
    o = np.argsort(cx)
    return cx[o], cy[o]


def _over(base: np.ndarray, top: np.ndarray, a: np.ndarray) -> np.ndarray:
    return base + (top - base) * a[..., None]
