"""The `mesh` renderer's piecewise-affine warp: the target mesh for one frame turns into a dense
backward map (evaluated on a coarse grid of about 45 samples per eye distance, upsampled
bilinearly, which is exact for the piecewise-linear map away from triangle edges) and only the
region that moves is remapped. Pixels outside the triangles that move are copied unchanged.
Where a mouth closing from an open source drags its dark cavity out of the inner lips, the
filled-in crop is shown instead.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from engines.mesh import geometry as G
from engines.mesh.prepare import PreparedFace, inner_mask, inner_polygon, signed_areas


def warp(face: PreparedFace, tgt: np.ndarray, tri: np.ndarray, blink: float, out: np.ndarray) -> None:
    """Backward-map the region of the moving triangles into ``out`` (in place)."""
    src = face.src
    step = face.step
    gx0, gy0 = face.grid_origin
    nx, ny = face.grid_size
    t = tgt[tri]  # (T, 3, 2)
    # the coarse window covering the moving triangles (target and source), with a margin
    both = np.concatenate([t.reshape(-1, 2), src[tri].reshape(-1, 2)])
    j0 = max(0, int(math.floor((both[:, 0].min() - gx0) / step)) - 2)
    i0 = max(0, int(math.floor((both[:, 1].min() - gy0) / step)) - 2)
    j1 = min(nx, int(math.ceil((both[:, 0].max() - gx0) / step)) + 3)
    i1 = min(ny, int(math.ceil((both[:, 1].max() - gy0) / step)) + 3)
    if j1 <= j0 or i1 <= i0:
        return
    cw, ch = j1 - j0, i1 - i0
    # backward affine per triangle: source = M @ [x, y, 1] for target (x, y)
    T = np.ones((len(tri), 3, 3))
    T[:, 0, :] = t[:, :, 0]
    T[:, 1, :] = t[:, :, 1]
    det = np.linalg.det(T)
    ok = np.abs(det) > 1e-3
    tri, T, t, det = tri[ok], T[ok], t[ok], det[ok]
    if not len(tri):
        return
    # raster the triangles the motion squeezes most (closing lips) or turns over first, so that
    # well-shaped neighbours win the pixels they share: a sliver's backward map magnifies, and an
    # edge pixel given to it samples far off (specks of teeth and cavity below closed lips)
    s_det = 2.0 * signed_areas(src, tri)
    order = np.argsort(det / np.where(np.abs(s_det) > 1e-9, s_det, 1e-9), kind="stable")
    tri, T, t = tri[order], T[order], t[order]
    S = np.transpose(src[tri], (0, 2, 1))  # (T, 2, 3)
    M = S @ np.linalg.inv(T)
    px0, py0 = gx0 + j0 * step, gy0 + i0 * step
    dxs, dys = _displacement(M, t, px0, py0, cw, ch, step)
    pw, ph = cw * step, ch * step
    if step > 1:
        dxs = cv2.resize(dxs, (pw, ph), interpolation=cv2.INTER_LINEAR)
        dys = cv2.resize(dys, (pw, ph), interpolation=cv2.INTER_LINEAR)
        # the map jumps where the lips (or eyelids) meet or part: evaluate it exactly there
        boxes = [tgt[list(G.LIP_UPPER_OUTER + G.LIP_LOWER_OUTER)]]
        if blink > 0:
            boxes += [tgt[list(e[2] + e[3])] for e in G.EYES]
        for pts in boxes:
            m = 2 * step
            bx0 = max(int(math.floor(pts[:, 0].min())) - m, px0)
            by0 = max(int(math.floor(pts[:, 1].min())) - m, py0)
            bx1 = min(int(math.ceil(pts[:, 0].max())) + m, px0 + pw)
            by1 = min(int(math.ceil(pts[:, 1].max())) + m, py0 + ph)
            if bx1 <= bx0 or by1 <= by0:
                continue
            near = ((t[:, :, 0].max(1) >= bx0) & (t[:, :, 0].min(1) <= bx1)
                    & (t[:, :, 1].max(1) >= by0) & (t[:, :, 1].min(1) <= by1))
            ex, ey = _displacement(M[near], t[near], bx0, by0, bx1 - bx0, by1 - by0, 1)
            dxs[by0 - py0: by1 - py0, bx0 - px0: bx1 - px0] = ex
            dys[by0 - py0: by1 - py0, bx0 - px0: bx1 - px0] = ey
    # crop to the image
    h, w = out.shape[:2]
    qx0, qy0 = max(px0, 0), max(py0, 0)
    qx1, qy1 = min(px0 + pw, w), min(py0 + ph, h)
    if qx1 <= qx0 or qy1 <= qy0:
        return
    dxs = dxs[qy0 - py0: qy1 - py0, qx0 - px0: qx1 - px0]
    dys = dys[qy0 - py0: qy1 - py0, qx0 - px0: qx1 - px0]
    map_x = dxs + np.arange(qx0, qx1, dtype=np.float32)[None, :]
    map_y = dys + np.arange(qy0, qy1, dtype=np.float32)[:, None]
    out[qy0:qy1, qx0:qx1] = cv2.remap(face.image, map_x, map_y, cv2.INTER_LINEAR,
                                      borderMode=cv2.BORDER_REPLICATE)
    if face.cavity is not None and _closing(face, tgt):
        _cover_cavity(face, tgt, map_x, map_y, out[qy0:qy1, qx0:qx1], qx0, qy0)


def _closing(face: PreparedFace, tgt: np.ndarray) -> bool:
    """Whether any inner-lip column is narrower than in the source (along the mouth's own axis)."""
    up_i, low_i = list(G.LIP_UPPER_INNER[1:-1]), list(G.LIP_LOWER_INNER[1:-1])
    gap = (tgt[low_i] - tgt[up_i]) @ face.rest.frame.axis_y
    return bool(np.any(gap < face.rest.rest_gap - 0.25))


def _cover_cavity(face: PreparedFace, tgt: np.ndarray, map_x: np.ndarray, map_y: np.ndarray,
                  region: np.ndarray, qx0: int, qy0: int) -> None:
    """Where the warp brings the source's dark cavity outside the target's inner lips (a mouth
    closing from an open source drags it into the lips and the corners), show the filled-in crop."""
    c = face.cavity
    # only around the target mouth: the cavity goes nowhere else
    lips = tgt[list(G.LIP_UPPER_OUTER + G.LIP_LOWER_OUTER)]
    pad = 0.25 * face.scale
    h, w = region.shape[:2]
    bx0, by0 = max(int(lips[:, 0].min() - pad) - qx0, 0), max(int(lips[:, 1].min() - pad) - qy0, 0)
    bx1, by1 = min(int(lips[:, 0].max() + pad) - qx0 + 1, w), min(int(lips[:, 1].max() + pad) - qy0 + 1, h)
    if bx1 <= bx0 or by1 <= by0:
        return
    region = region[by0:by1, bx0:bx1]
    qx0, qy0 = qx0 + bx0, qy0 + by0
    mx, my = map_x[by0:by1, bx0:bx1] - c.x0, map_y[by0:by1, bx0:bx1] - c.y0
    leak = cv2.remap(c.mask, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    h, w = region.shape[:2]
    leak *= 1.0 - inner_mask(inner_polygon(tgt), qx0, qy0, w, h, face.scale)
    ys, xs = np.nonzero(leak > 1e-3)
    if not len(ys):
        return
    sub = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    filled = cv2.remap(c.filled, mx[sub], my[sub], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    a = leak[sub][..., None]
    region[sub] = (region[sub] * (1.0 - a) + filled * a + 0.5).astype(np.uint8)


def _displacement(M: np.ndarray, t: np.ndarray, x0: int, y0: int, nx: int, ny: int, step: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Backward displacement (source - target) at the samples x0 + (j + 0.5) * step - 0.5 (the
    centres cv2.resize assumes), j < nx, and likewise in y; zero outside the triangles."""
    ids = np.full((ny, nx), -1, np.int32)
    cx = (t[:, :, 0] - x0 + 0.5) / step - 0.5
    cy = (t[:, :, 1] - y0 + 0.5) / step - 0.5
    poly = np.round(np.stack([cx, cy], axis=2) * 16).astype(np.int32)
    for k in range(len(poly)):
        cv2.fillConvexPoly(ids, poly[k], k, cv2.LINE_8, 4)
    dxs = np.zeros((ny, nx), np.float32)
    dys = np.zeros((ny, nx), np.float32)
    ii, jj = np.nonzero(ids >= 0)
    if len(ii):
        X = x0 + (jj + 0.5) * step - 0.5
        Y = y0 + (ii + 0.5) * step - 0.5
        m = M[ids[ii, jj]]
        dxs[ii, jj] = m[:, 0, 0] * X + m[:, 0, 1] * Y + m[:, 0, 2] - X
        dys[ii, jj] = m[:, 1, 0] * X + m[:, 1, 1] * Y + m[:, 1, 2] - Y
    return dxs, dys
