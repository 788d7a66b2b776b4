"""The `mesh` backend's renderer: a piecewise-affine warp of the face driven by mouth parameters,
a synthesised mouth interior, blinks and a slight head sway.

``prepare_face`` caches what one image and its landmarks allow (mesh topology, the rest mouth,
colour samples); ``render_mouth`` builds the target mesh for one frame, turns it into a dense
backward map (evaluated on a coarse grid of about 45 samples per eye distance, upsampled
bilinearly, which is exact for the piecewise-linear map away from triangle edges) and remaps only
the region that moves. Pixels outside the triangles that move are copied unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial import Delaunay

from engines.face import N_LANDMARKS, face_scale, mouth_opening
from engines.mesh import geometry as G
from engines.mouth import OPENING_AT_FULL, MouthParams

GRID_PER_SCALE = 45.0  # coarse map samples per eye distance
OPEN_SOURCE = 0.03  # mouth_opening() above which the source shows a cavity worth covering


@dataclass(frozen=True)
class Colours:
    teeth: np.ndarray   # float32 RGB 0..255
    cavity: np.ndarray
    tongue: np.ndarray
    lip: np.ndarray
    lash: np.ndarray


@dataclass(frozen=True)
class Cavity:
    """An open source mouth's cavity (a crop around it): where it is, and the crop with it filled
    in from the lips around, for the pixels a closing mouth drags out of it."""

    x0: int
    y0: int
    mask: np.ndarray    # float32 0..1, the crop's size (soft-edged)
    filled: np.ndarray  # RGB uint8, the crop with the cavity inpainted


@dataclass(eq=False)
class PreparedFace:
    """Everything cacheable for one image and its landmarks."""

    image: np.ndarray        # the source RGB image (never written)
    landmarks: np.ndarray    # (478, 3) float32
    scale: float             # eye distance, px
    rest: G.MouthRest
    src: np.ndarray          # (N_POINTS, 2) float64 mesh points in the source
    triangles: np.ndarray    # (T, 3) int32
    centre: np.ndarray       # head centre (sway pivot)
    step: int                # coarse grid step, px
    grid_origin: tuple[int, int]  # x, y of the region the grid covers (may leave the image)
    grid_size: tuple[int, int]    # nx, ny coarse samples
    colours: Colours
    cavity: Cavity | None = None  # set when the source mouth is open
    orientation: np.ndarray | None = None  # (T,) sign of each triangle in the topology layout

    @property
    def rest_open(self) -> float:
        """The ``open`` parameter that reproduces the source mouth."""
        return self.rest.rest_opening / OPENING_AT_FULL


def prepare_face(image: np.ndarray, landmarks: np.ndarray, previous: PreparedFace | None = None) -> PreparedFace:
    """``previous``: the same face in the previous camera frame; its triangulation is reused while
    it still fits (every triangle keeps its orientation), which saves a Delaunay per frame."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image, got {image.dtype} {image.shape}")
    if landmarks.shape[0] < N_LANDMARKS:
        raise ValueError(f"expected {N_LANDMARKS} landmarks, got {landmarks.shape}")
    h, w = image.shape[:2]
    pts = landmarks[:, :2].astype(np.float64)
    s = max(face_scale(landmarks), 4.0)
    rest = G.measure_rest(pts, s, mouth_opening(landmarks))

    src = np.zeros((G.N_POINTS, 2))
    src[: G.N_FACE] = pts[: G.N_FACE]
    mid = 0.5 * (pts[list(G.LIP_UPPER_INNER[1:-1])] + pts[list(G.LIP_LOWER_INNER[1:-1])])
    src[G.MID_UP: G.MID_UP + G.N_PAIRS] = mid
    src[G.MID_LOW: G.MID_LOW + G.N_PAIRS] = mid
    oval = pts[list(G.FACE_OVAL)]
    centre = oval.mean(axis=0)
    out = oval - centre
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)
    src[G.RING1: G.RING2] = oval + out * 0.5 * s
    src[G.RING2:] = oval + out * 1.15 * s

    # topology from a wide-open configuration, where the lip rows and interior rows are apart
    topo_open = max(0.8, rest.rest_opening / OPENING_AT_FULL + 0.4)
    topo = _targets(src, rest, centre, MouthParams(topo_open, 0.0, 0.0), 0.0, (0.0, 0.0, 0.0), pts)
    tri, orientation = None, None
    if previous is not None and previous.orientation is not None:
        area = _signed_areas(topo, previous.triangles)
        if np.all(np.sign(area) == previous.orientation) and np.all(np.abs(area) > 1e-6):
            tri, orientation = previous.triangles, previous.orientation
    if tri is None:
        tri = Delaunay(topo).simplices.astype(np.int32)
        area = _signed_areas(topo, tri)
        keep = np.abs(area) > 1e-6
        tri, orientation = tri[keep], np.sign(area[keep])

    step = max(1, int(round(s / GRID_PER_SCALE)))
    ring2 = src[G.RING2:]
    x0 = int(math.floor(max(ring2[:, 0].min(), 0)))
    y0 = int(math.floor(max(ring2[:, 1].min(), 0)))
    x1 = int(math.ceil(min(ring2[:, 0].max(), w)))
    y1 = int(math.ceil(min(ring2[:, 1].max(), h)))
    nx = max(1, -(-(x1 - x0) // step))
    ny = max(1, -(-(y1 - y0) // step))
    cavity = _cavity(image, pts, s) if rest.rest_opening >= OPEN_SOURCE else None
    return PreparedFace(image, landmarks, s, rest, src, tri, centre, step, (x0, y0), (nx, ny),
                        _sample_colours(image, pts, rest, s), cavity, orientation)


def _signed_areas(points: np.ndarray, tri: np.ndarray) -> np.ndarray:
    a = points[tri]
    return 0.5 * ((a[:, 1, 0] - a[:, 0, 0]) * (a[:, 2, 1] - a[:, 0, 1])
                  - (a[:, 2, 0] - a[:, 0, 0]) * (a[:, 1, 1] - a[:, 0, 1]))


def _inner_polygon(points: np.ndarray) -> np.ndarray:
    return np.concatenate([points[list(G.LIP_UPPER_INNER)], points[list(G.LIP_LOWER_INNER[::-1])]])[:, :2]


def _cavity_margin(s: float) -> int:
    # FaceMesh's inner-lip contour runs a little inside the dark of an open mouth
    return max(1, int(round(0.03 * s)))


def _inner_mask(poly: np.ndarray, x0: int, y0: int, w: int, h: int, s: float) -> np.ndarray:
    """The inner-lip polygon widened by the cavity margin, soft-edged (float32 0..1; soft so that
    covering the cavity never draws an outline of its own)."""
    margin = _cavity_margin(s)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round((poly - (x0, y0)) * 16).astype(np.int32)], 255, cv2.LINE_8, 4)
    mask = cv2.dilate(mask, np.ones((2 * margin + 1,) * 2, np.uint8))
    return cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 0.5 * margin + 0.5)


def _cavity(image: np.ndarray, pts: np.ndarray, s: float) -> Cavity:
    poly = _inner_polygon(pts)
    pad = int(0.2 * s) + 4
    h, w = image.shape[:2]
    x0, y0 = max(int(poly[:, 0].min()) - pad, 0), max(int(poly[:, 1].min()) - pad, 0)
    x1, y1 = min(int(poly[:, 0].max()) + pad, w), min(int(poly[:, 1].max()) + pad, h)
    mask = _inner_mask(poly, x0, y0, x1 - x0, y1 - y0, s)
    # filled in from the lips around, at most 48 px across (it only stands in for blurred lip
    # and skin; at full size cv2.inpaint cost ~2.5 ms a frame in camera mode)
    crop = np.ascontiguousarray(image[y0:y1, x0:x1])
    f = min(1.0, 48.0 / max(crop.shape[:2]))
    size = (max(1, round(crop.shape[1] * f)), max(1, round(crop.shape[0] * f)))
    hole = (cv2.resize(mask, size, interpolation=cv2.INTER_AREA) > 0.01).astype(np.uint8)
    small = cv2.inpaint(cv2.resize(crop, size, interpolation=cv2.INTER_AREA), hole, 2, cv2.INPAINT_TELEA)
    filled = cv2.resize(small, (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_LINEAR)
    return Cavity(x0, y0, mask, filled)


def render_mouth(face: PreparedFace, params: MouthParams, blink: float = 0.0,
                 sway: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    out = face.image.copy()
    tgt = _targets(face.src, face.rest, face.centre, params, blink, sway, face.src)
    moved = np.abs(tgt - face.src).max(axis=1) > 1e-4
    tri = face.triangles[moved[face.triangles].any(axis=1)]
    if len(tri):
        _warp(face, tgt, tri, blink, out)
    up_in = tgt[list(G.LIP_UPPER_INNER)]
    low_in = tgt[list(G.LIP_LOWER_INNER)]
    mid_up = tgt[G.MID_UP: G.MID_UP + G.N_PAIRS]
    mid_low = tgt[G.MID_LOW: G.MID_LOW + G.N_PAIRS]
    if float(np.max(np.linalg.norm(mid_low - mid_up, axis=1))) > 0.05:
        _interior(face, up_in, low_in, mid_up, mid_low, out)
    rest_gap = float(face.rest.rest_gap[list(G.MEASURED_PAIRS)].mean())
    if rest_gap > 0.5:
        gap = float(np.linalg.norm(low_in[1:-1] - up_in[1:-1], axis=1)[list(G.MEASURED_PAIRS)].mean())
        if gap < rest_gap:
            _seam(face, up_in, low_in, 1.0 - gap / rest_gap, out)
    if blink > 0.3:
        for (upper, lower, _, _), corners in zip(G.EYES, ((33, 133), (263, 362))):
            lid = np.concatenate([tgt[[corners[0]]], 0.5 * (tgt[list(upper)] + tgt[list(lower)]), tgt[[corners[1]]]])
            _seam(face, lid, lid, (blink - 0.3) / 0.7, out, colour=face.colours.lash, width=0.02)
    return out


# --- targets -------------------------------------------------------------------------------


def _targets(src: np.ndarray, rest: G.MouthRest, centre: np.ndarray, params: MouthParams,
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


# --- the warp ------------------------------------------------------------------------------


def _warp(face: PreparedFace, tgt: np.ndarray, tri: np.ndarray, blink: float, out: np.ndarray) -> None:
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
    s_det = 2.0 * _signed_areas(src, tri)
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
    leak *= 1.0 - _inner_mask(_inner_polygon(tgt), qx0, qy0, w, h, face.scale)
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


# --- the mouth interior --------------------------------------------------------------------


def _sample_colours(image: np.ndarray, pts: np.ndarray, rest: G.MouthRest, s: float) -> Colours:
    h, w = image.shape[:2]
    img = image.astype(np.float32)

    def at(points: np.ndarray) -> np.ndarray:
        r = max(1, int(round(0.015 * s)))
        vals = []
        for x, y in points:
            xi, yi = int(round(x)), int(round(y))
            patch = img[max(yi - r, 0): min(yi + r + 1, h), max(xi - r, 0): min(xi + r + 1, w)]
            if patch.size:
                vals.append(patch.reshape(-1, 3).mean(axis=0))
        return np.median(np.array(vals), axis=0) if vals else np.array([180.0, 120.0, 110.0])

    lip = at(np.concatenate([
        0.5 * (pts[list(G.LIP_UPPER_OUTER[3:8])] + pts[list(G.LIP_UPPER_INNER[3:8])]),
        0.5 * (pts[list(G.LIP_LOWER_OUTER[3:8])] + pts[list(G.LIP_LOWER_INNER[3:8])])]))
    skin = at(pts[[205, 425, 199, 50, 280]])
    skin_l = float(skin @ [0.299, 0.587, 0.114])
    sat = float((skin.max() - skin.min()) / max(skin.max(), 1.0))
    colour = float(np.clip(sat / 0.15, 0.0, 1.0))  # greyscale portraits get grey teeth and tongue

    def tint(c: np.ndarray) -> np.ndarray:
        lum = float(c @ [0.299, 0.587, 0.114])
        return np.clip(lum + (c - lum) * colour, 0, 255).astype(np.float32)

    teeth_l = float(np.clip(skin_l * 1.05 + 25.0, 120.0, 235.0))
    teeth = np.array([1.0, 0.97, 0.90]) * teeth_l
    cavity = np.maximum(lip * 0.3, skin * 0.1) * np.array([1.0, 0.85, 0.85])
    tongue = (0.6 * lip + 0.4 * np.array([190.0, 90.0, 90.0]) * (skin_l / 180.0)) * 0.9
    # an open source mouth shows its own teeth and shadow: take their colours
    if rest.rest_gap[list(G.MEASURED_PAIRS)].mean() > 0.05 * s:
        mask = np.zeros((h, w), np.uint8)
        cv2.fillPoly(mask, [np.round(_inner_polygon(pts) * 16).astype(np.int32)], 255, cv2.LINE_8, 4)
        mask = cv2.erode(mask, np.ones((3, 3), np.uint8))
        inner = img[mask > 0]
        if len(inner) >= 12:
            lum = inner @ np.array([0.299, 0.587, 0.114], np.float32)
            order = np.argsort(lum)
            q = max(3, len(order) // 4)
            bright, dark = inner[order[-q:]].mean(axis=0), inner[order[:q]].mean(axis=0)
            bl = float(bright @ [0.299, 0.587, 0.114])
            if bl > 0.7 * skin_l and (bright.max() - bright.min()) < 0.35 * bright.max():
                teeth = bright
            cavity = np.minimum(dark, cavity * 1.5)
    lids = np.array([img[int(np.clip(round(y), 0, h - 1)), int(np.clip(round(x), 0, w - 1))]
                     for x, y in pts[[159, 158, 160, 386, 385, 387]]])
    lash = lids[np.argsort(lids @ np.array([0.299, 0.587, 0.114]))[:3]].mean(axis=0) * 0.8
    return Colours(tint(teeth), tint(cavity), tint(tongue), tint(lip), lash.astype(np.float32))


def _interior(face: PreparedFace, up_in: np.ndarray, low_in: np.ndarray, mid_up: np.ndarray,
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


def _seam(face: PreparedFace, up_in: np.ndarray, low_in: np.ndarray, strength: float,
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


def smooth01(x: float, e0: float, e1: float) -> float:
    return float(G.smoothstep(e0, e1, np.float64(x)))
