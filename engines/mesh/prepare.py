"""Preparing a face for the `mesh` renderer: ``prepare_face`` caches what one image and its
landmarks allow (mesh topology, the rest mouth, colour samples) and, for an open source mouth,
its cavity with the crop around it filled in from the lips around.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial import Delaunay

from engines.face import N_LANDMARKS, face_scale, mouth_opening
from engines.mesh import geometry as G
from engines.mesh.head import HeadRig, rig_of
from engines.mesh.targets import targets
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
    centre: np.ndarray       # head centre in the image
    step: int                # coarse grid step, px
    grid_origin: tuple[int, int]  # x, y of the region the grid covers (may leave the image)
    grid_size: tuple[int, int]    # nx, ny coarse samples
    colours: Colours
    cavity: Cavity | None = None  # set when the source mouth is open
    orientation: np.ndarray | None = None  # (T,) sign of each triangle in the topology layout
    rig: HeadRig | None = None  # for moving the whole head (head.py)

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
    topo = targets(src, rest, MouthParams(topo_open, 0.0, 0.0), pts)
    tri, orientation = None, None
    if previous is not None and previous.orientation is not None:
        area = signed_areas(topo, previous.triangles)
        if np.all(np.sign(area) == previous.orientation) and np.all(np.abs(area) > 1e-6):
            tri, orientation = previous.triangles, previous.orientation
    if tri is None:
        tri = Delaunay(topo).simplices.astype(np.int32)
        area = signed_areas(topo, tri)
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
                        _sample_colours(image, pts, rest, s), cavity, orientation, rig_of(landmarks, centre, s))


def signed_areas(points: np.ndarray, tri: np.ndarray) -> np.ndarray:
    a = points[tri]
    return 0.5 * ((a[:, 1, 0] - a[:, 0, 0]) * (a[:, 2, 1] - a[:, 0, 1])
                  - (a[:, 2, 0] - a[:, 0, 0]) * (a[:, 1, 1] - a[:, 0, 1]))


def inner_polygon(points: np.ndarray) -> np.ndarray:
    return np.concatenate([points[list(G.LIP_UPPER_INNER)], points[list(G.LIP_LOWER_INNER[::-1])]])[:, :2]


def _cavity_margin(s: float) -> int:
    # FaceMesh's inner-lip contour runs a little inside the dark of an open mouth
    return max(1, int(round(0.03 * s)))


def inner_mask(poly: np.ndarray, x0: int, y0: int, w: int, h: int, s: float) -> np.ndarray:
    """The inner-lip polygon widened by the cavity margin, soft-edged (float32 0..1; soft so that
    covering the cavity never draws an outline of its own)."""
    margin = _cavity_margin(s)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round((poly - (x0, y0)) * 16).astype(np.int32)], 255, cv2.LINE_8, 4)
    mask = cv2.dilate(mask, np.ones((2 * margin + 1,) * 2, np.uint8))
    return cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 0.5 * margin + 0.5)


def _cavity(image: np.ndarray, pts: np.ndarray, s: float) -> Cavity:
    poly = inner_polygon(pts)
    pad = int(0.2 * s) + 4
    h, w = image.shape[:2]
    x0, y0 = max(int(poly[:, 0].min()) - pad, 0), max(int(poly[:, 1].min()) - pad, 0)
    x1, y1 = min(int(poly[:, 0].max()) + pad, w), min(int(poly[:, 1].max()) + pad, h)
    mask = inner_mask(poly, x0, y0, x1 - x0, y1 - y0, s)
    # filled in from the lips around, at most 48 px across (it only stands in for blurred lip
    # and skin; at full size cv2.inpaint cost ~2.5 ms a frame in camera mode)
    crop = np.ascontiguousarray(image[y0:y1, x0:x1])
    f = min(1.0, 48.0 / max(crop.shape[:2]))
    size = (max(1, round(crop.shape[1] * f)), max(1, round(crop.shape[0] * f)))
    hole = (cv2.resize(mask, size, interpolation=cv2.INTER_AREA) > 0.01).astype(np.uint8)
    small = cv2.inpaint(cv2.resize(crop, size, interpolation=cv2.INTER_AREA), hole, 2, cv2.INPAINT_TELEA)
    filled = cv2.resize(small, (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_LINEAR)
    return Cavity(x0, y0, mask, filled)


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
        cv2.fillPoly(mask, [np.round(inner_polygon(pts) * 16).astype(np.int32)], 255, cv2.LINE_8, 4)
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
