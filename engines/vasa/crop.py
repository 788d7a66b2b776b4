"""The avatar crop, the paste mask and the putback of rendered faces (spec vasa.md §5.1, §5.4, §7).

Behaviour matched (not copied) from antgroup/ditto-talkinghead@e9191cf:

* the similarity crop: ``core/utils/crop.py`` (``parse_rect_from_landmark``,
  ``_estimate_similar_transform_from_pts``, ``crop_image``), which is LivePortrait's
  ``src/utils/crop.py``; the 224 seed crop -> landmark203 -> 512 crop chain:
  ``core/atomic_components/source2info.py`` and ``core/aux_models/landmark203.py``;
* the mask: ``core/utils/get_mask.py``; the putback: ``core/atomic_components/putback.py`` with
  the blend of ``core/utils/blend/blend_impl.c`` (float32 blend, clamp, truncate).

The seed is MediaPipe FaceMesh (478 points) instead of InsightFace's 106 (non-commercial), §7.
No torch, no onnxruntime: the landmark203 network is run by the backend.
"""

from __future__ import annotations

import logging
import threading

import cv2
import numpy as np

log = logging.getLogger(__name__)

SEED_DSIZE, SEED_SCALE, SEED_VY = 224, 1.5, -0.1  # source2info.py: the crop landmark203 sees
CROP_DSIZE, CROP_SCALE, CROP_VY = 512, 2.3, -0.125  # stream_pipeline_online.py crop defaults
MODEL_SIZE = 256  # motion / appearance extractor input

# MediaPipe FaceMesh indices. Eye centres: the mean of each eye's corners and lid midpoints, like
# the 4-point eye means Ditto takes from the 106 set (gaze-independent, unlike the iris).
MP_EYE_R = (33, 133, 159, 145)
MP_EYE_L = (263, 362, 386, 374)
MP_LIP_MID = (13, 14)  # inner upper / lower lip
# The face oval, ear to ear under the chin (the part InsightFace's 106-point contour covers)...
MP_JAW = (127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152,
          377, 400, 378, 379, 365, 397, 288, 361, 323, 454, 356)
# ...its forehead arc (not in the 106 set, whose top is the brows)...
MP_FOREHEAD = (162, 21, 54, 103, 67, 109, 10, 338, 297, 332, 284, 251, 389)
# ...and the brows, the top of the 106 set's box
MP_BROWS = (46, 53, 52, 65, 55, 70, 63, 105, 66, 107, 276, 283, 282, 295, 285, 300, 293, 334, 296, 336)

# landmark203 (LivePortrait) points Ditto's crop.py reads: eye quads and the lip pair
L203_EYE_L = (0, 6, 12, 18)
L203_EYE_R = (24, 30, 36, 42)
L203_LIP = (48, 66)


def similarity_transform(points: np.ndarray, eye_center: np.ndarray, lip_center: np.ndarray, *, dsize: int,
                         scale: float, vy_ratio: float, vx_ratio: float = 0.0,
                         flag_do_rot: bool = True) -> np.ndarray:
    """3x3 float32 image -> crop matrix (crop.py ``parse_rect_from_landmark`` +
    ``_estimate_similar_transform_from_pts``). The face's vertical axis runs from the eye centre to
    the lip centre; the square is the points' box in that rotated frame, ``scale`` times its
    larger side, moved by ``vy_ratio`` (and ``vx_ratio``) times its size along the axes."""
    pts = np.asarray(points, np.float64)[:, :2]
    uy = np.asarray(lip_center, np.float64)[:2] - np.asarray(eye_center, np.float64)[:2]
    norm = np.linalg.norm(uy)
    uy = uy / norm if norm > 1e-3 else np.array([0.0, 1.0])
    ux = np.array([uy[1], -uy[0]])
    axes = np.stack([ux, uy])  # rows: the face's x and y axes in image coordinates
    origin = pts.mean(axis=0)
    local = (pts - origin) @ axes.T
    lo, hi = local.min(axis=0), local.max(axis=0)
    size = float(np.max(hi - lo)) * scale  # square
    centre = origin + axes.T @ ((lo + hi) / 2) + (ux * vx_ratio + uy * vy_ratio) * size
    s = dsize / size
    # with rotation: rows s*ux, s*uy (= Ditto's s*[cos, sin; -sin, cos] of the x-axis angle)
    lin = s * axes if flag_do_rot else s * np.eye(2)
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = dsize / 2 - lin @ centre
    return m.astype(np.float32)


def _warp_crop(image: np.ndarray, m_o2c: np.ndarray, dsize: int) -> tuple[np.ndarray, np.ndarray]:
    """The crop (INTER_LINEAR, black outside the image) and its crop -> image matrix, float32 as
    Ditto's ``crop_image`` returns it."""
    crop = cv2.warpAffine(np.ascontiguousarray(image), m_o2c[:2], (dsize, dsize), flags=cv2.INTER_LINEAR)
    return crop, np.linalg.inv(m_o2c)


def seed_points(landmarks478: np.ndarray, box: str = "brows") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(box points (K, 2), eye centre, lip centre) from FaceMesh's 478 pixel landmarks.
    ``box="brows"``: the face oval up to the brows, the extent of InsightFace's 106 points;
    ``"oval"``: the whole face oval (forehead included, as FasterLivePortrait's MediaPipe mode)."""
    lm = np.asarray(landmarks478, np.float64)
    if lm.shape[0] < 468 or lm.ndim != 2:
        raise ValueError(f"need FaceMesh's 468/478 landmarks, got shape {lm.shape}")
    eye = (lm[list(MP_EYE_R), :2].mean(axis=0) + lm[list(MP_EYE_L), :2].mean(axis=0)) / 2
    lip = lm[list(MP_LIP_MID), :2].mean(axis=0)
    if box == "brows":
        idx = MP_JAW + MP_BROWS
    elif box == "oval":
        idx = MP_JAW + MP_FOREHEAD
    else:
        raise ValueError(f"box must be 'brows' or 'oval', got {box!r}")
    return lm[list(idx), :2], eye, lip


def seed_crop(landmarks478: np.ndarray, image: np.ndarray, box: str = "brows") -> tuple[np.ndarray, np.ndarray]:
    """(crop224 RGB uint8, M 3x3 float32 crop -> image): the crop landmark203 runs on, LivePortrait's
    dsize 224, scale 1.5, vy -0.1, rotation corrected (source2info.py ``_crop``), seeded from
    MediaPipe (§7) instead of the 106 points."""
    pts, eye, lip = seed_points(landmarks478, box)
    m = similarity_transform(pts, eye, lip, dsize=SEED_DSIZE, scale=SEED_SCALE, vy_ratio=SEED_VY)
    return _warp_crop(image, m, SEED_DSIZE)


def to_lmk203_input(crop224: np.ndarray) -> np.ndarray:
    """(1, 3, 224, 224) float32 RGB in [0, 1] for landmark203.onnx (landmark203.py ``run``)."""
    return np.ascontiguousarray((np.asarray(crop224).astype(np.float32) / 255.0).transpose(2, 0, 1)[None])


def lmk203_to_image(raw406: np.ndarray, m_seed: np.ndarray) -> np.ndarray:
    """(203, 2) float32 image pixels from landmark203's (1, 406) output: normalised to the 224 seed
    crop, so x 224, then through the seed's crop -> image matrix (landmark203.py ``run``)."""
    pts = np.asarray(raw406, np.float32).reshape(-1, 2) * np.float32(SEED_DSIZE)
    if pts.shape[0] != 203:
        raise ValueError(f"landmark203 gives 406 values, got {pts.size}")
    m = np.asarray(m_seed, np.float32)
    return pts @ m[:2, :2].T + m[:2, 2]


def crop_from_lmk203(points203: np.ndarray, image: np.ndarray, *, scale: float = CROP_SCALE,
                     vy_ratio: float = CROP_VY, flag_do_rot: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(crop512 RGB uint8, M_c2o 3x3 float32): the renderer's crop from the 203 points in image
    pixels. Ditto's ``crop_image`` takes no ``vx_ratio`` (the cfg's ``crop_vx_ratio`` is dropped),
    so there is none here."""
    pts = np.asarray(points203, np.float64)[:, :2]
    if pts.shape[0] != 203:
        raise ValueError(f"need 203 points, got {pts.shape[0]}")
    eye = (pts[list(L203_EYE_L)].mean(axis=0) + pts[list(L203_EYE_R)].mean(axis=0)) / 2
    lip = pts[list(L203_LIP)].mean(axis=0)
    m = similarity_transform(pts, eye, lip, dsize=CROP_DSIZE, scale=scale, vy_ratio=vy_ratio, flag_do_rot=flag_do_rot)
    return _warp_crop(image, m, CROP_DSIZE)


def to_model_input(crop512: np.ndarray) -> np.ndarray:
    """(1, 3, 256, 256) float32 RGB in [0, 1]: the motion / appearance extractors' input
    (source2info.py ``_img_crop_to_bchw256``: INTER_AREA resize, /255)."""
    small = cv2.resize(np.ascontiguousarray(crop512), (MODEL_SIZE, MODEL_SIZE), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray((small.astype(np.float32) / 255.0).transpose(2, 0, 1)[None])


def _strips(n: int, ratio: float) -> tuple[slice, slice, slice]:
    """Low border strip, centre, high border strip of one side (get_mask.py's int() and //2)."""
    lo = (n - int(n * ratio)) // 2
    hi = lo + int(n * ratio)
    return slice(0, lo), slice(lo, hi), slice(hi, n)


def paste_mask(size: int = 512, ratio: float = 0.9) -> np.ndarray:
    """(size, size) float32 paste mask (get_mask.py ``get_mask(size, size, ratio, ratio)``): 1 over
    the centre ``ratio`` of each side; linear ramps from 0 at the edge to 1 over the border strips;
    in the corners 1 - (distance to the inner corner, in strip widths), clipped at 0."""
    a, c, b = _strips(size, ratio)
    n_a, n_b = a.stop - a.start, b.stop - b.start
    up_a, down_b = np.linspace(0, 1, n_a), np.linspace(1, 0, n_b)  # edge strips: 0 at the border
    out_a, out_b = np.linspace(1, 0, n_a), np.linspace(0, 1, n_b)  # "outside-ness" for the corners
    mask = np.ones((size, size), np.float32)
    mask[a, c] = up_a[:, None].astype(np.float32)
    mask[b, c] = down_b[:, None].astype(np.float32)
    mask[c, a] = up_a[None, :].astype(np.float32)
    mask[c, b] = down_b[None, :].astype(np.float32)
    for rows, cols, dy, dx in ((a, a, out_a, out_a), (a, b, out_a, out_b), (b, a, out_b, out_a), (b, b, out_b, out_b)):
        dist = np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2).astype(np.float32)
        mask[rows, cols] = 1 - np.clip(dist, 0, 1)
    return mask


def _remap_tables(m_c2o: np.ndarray, x0: int, y0: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-point remap tables for destination pixels [x0, x0+w) x [y0, y0+h), computed the way
    OpenCV's warpAffine (INTER_LINEAR) does internally: inverse matrix in double, 1/1024 pixel
    steps rounded to 1/32. Remapping only the crop's box with them gives the bytes a full-frame
    warpAffine would (checked at run time by :class:`Putback`)."""
    a, b, c, d, e, f = np.asarray(m_c2o, np.float64)[:2].reshape(-1)
    det = a * e - b * d
    inv = 1.0 / det if det != 0 else 0.0
    ia, ib, id_, ie = e * inv, -b * inv, -d * inv, a * inv
    ic, if_ = -ia * c - ib * f, -id_ * c - ie * f
    xs = np.arange(x0, x0 + w, dtype=np.float64)
    ys = np.arange(y0, y0 + h, dtype=np.float64)
    one = 1024  # OpenCV's AB_SCALE; INTER_TAB_SIZE 32, round_delta 16
    col_x = np.rint(ia * xs * one).astype(np.int64)
    col_y = np.rint(id_ * xs * one).astype(np.int64)
    row_x = np.rint((ib * ys + ic) * one).astype(np.int64) + 16
    row_y = np.rint((ie * ys + if_) * one).astype(np.int64) + 16
    fx = (row_x[:, None] + col_x[None, :]) >> 5  # in 1/32 pixels
    fy = (row_y[:, None] + col_y[None, :]) >> 5
    xy = np.stack([np.clip(fx >> 5, -32768, 32767), np.clip(fy >> 5, -32768, 32767)], axis=-1).astype(np.int16)
    frac = ((fy & 31) * 32 + (fx & 31)).astype(np.uint16)
    return xy, frac


class Putback:
    """Pastes 512 renders into frames of one size for one avatar (putback.py ``PutBack``).

    The mask is warped once (cv2.warpAffine, M_c2o[:2], INTER_LINEAR, clipped to [0, 1]). Per
    frame only the box where the warped mask is non-zero is touched: there the render is warped
    and blended ``m * render + (1 - m) * frame`` in float32, clamped to 0..255 and truncated;
    every other pixel is the frame's byte for byte."""

    def __init__(self, m_c2o: np.ndarray, frame_size: tuple[int, int], mask: np.ndarray | None = None) -> None:
        """``frame_size``: (height, width) of the frames; ``mask``: the crop-space mask (default
        :func:`paste_mask` (512, 0.9)); its size is the render's."""
        self.m_c2o = np.asarray(m_c2o, np.float64)
        self.height, self.width = int(frame_size[0]), int(frame_size[1])
        crop_mask = paste_mask() if mask is None else np.asarray(mask, np.float32)
        if crop_mask.ndim == 3:
            crop_mask = crop_mask[:, :, 0]
        self.crop_size = crop_mask.shape[0]
        full = np.clip(cv2.warpAffine(np.ascontiguousarray(crop_mask), self.m_c2o[:2], (self.width, self.height),
                                      flags=cv2.INTER_LINEAR), 0, 1)
        rows, cols = np.flatnonzero(full.any(axis=1)), np.flatnonzero(full.any(axis=0))
        if rows.size == 0:
            self.box = (0, 0, 0, 0)
        else:
            self.box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)  # x0, y0, x1, y1
        x0, y0, x1, y1 = self.box
        self.mask = np.ascontiguousarray(full[y0:y1, x0:x1])  # (h, w) warped mask over the box
        # per-channel copies as (h, w*3) planes: OpenCV's element-wise ops on them are several
        # times faster than numpy broadcasting, with the same float32 products and sums
        self._m3 = np.repeat(self.mask, 3, axis=1)
        self._inv3 = np.float32(1) - self._m3  # 1 - m in float32, as blend_impl.c's mask_inv
        self._local = threading.local()
        self._tables = _remap_tables(self.m_c2o, x0, y0, x1 - x0, y1 - y0) if x1 > x0 else None
        self.exact = self._tables is not None and self._check_tables()
        if self._tables is not None and not self.exact:
            log.info("this OpenCV warps differently from the remap tables: putback warps the box with warpAffine")

    def _check_tables(self) -> bool:
        # a textured probe, so that any table difference shows
        probe = np.random.default_rng(0).random((self.crop_size, self.crop_size), dtype=np.float32)
        x0, y0, x1, y1 = self.box
        full = cv2.warpAffine(probe, self.m_c2o[:2], (self.width, self.height), flags=cv2.INTER_LINEAR)
        return bool(np.array_equal(self._warp(probe, use_tables=True), full[y0:y1, x0:x1]))

    def _warp(self, render: np.ndarray, use_tables: bool, dst: np.ndarray | None = None) -> np.ndarray:
        x0, y0, x1, y1 = self.box
        if use_tables:
            xy, frac = self._tables
            return cv2.remap(render, xy, frac, cv2.INTER_LINEAR, dst=dst, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        shifted = self.m_c2o[:2].copy()
        shifted[:, 2] -= (x0, y0)
        return cv2.warpAffine(render, shifted, (x1 - x0, y1 - y0), dst=dst, flags=cv2.INTER_LINEAR)

    def _buffers(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # reused float32 buffers, per thread (one Putback may serve several streams): fresh ones
        # would cost page faults on every frame
        bufs = getattr(self._local, "bufs", None)
        if bufs is None:
            x0, y0, x1, y1 = self.box
            bufs = (np.empty((self.crop_size, self.crop_size, 3), np.float32),
                    np.empty((y1 - y0, x1 - x0, 3), np.float32),
                    np.empty((y1 - y0, (x1 - x0) * 3), np.float32))
            self._local.bufs = bufs
        return bufs

    def paste(self, frame: np.ndarray, render: np.ndarray) -> np.ndarray:
        """uint8 HxWx3: ``render`` (crop-size square, RGB: float32 in [0, 1] from the decoder, or
        uint8) pasted into a copy of ``frame`` (uint8 HxWx3)."""
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(f"frame must be uint8 {self.height}x{self.width}x3, got {frame.dtype} {frame.shape}")
        if render.shape != (self.crop_size, self.crop_size, 3):
            raise ValueError(f"render must be {self.crop_size}x{self.crop_size}x3, got {render.shape}")
        out = frame.copy()
        if self._tables is None:
            return out
        pixels, warped, region = self._buffers()
        if render.dtype == np.uint8:
            np.copyto(pixels, render)
        else:  # decoder.py: clip to [0, 1], then x255, before the warp
            np.clip(render, 0, 1, out=pixels)
            np.multiply(pixels, np.float32(255), out=pixels)
        self._warp(pixels, use_tables=self.exact, dst=warped)
        x0, y0, x1, y1 = self.box
        plane = region.shape
        blend = warped.reshape(plane)
        np.copyto(region, frame[y0:y1, x0:x1].reshape(plane))  # uint8 -> float32
        # m * render + (1 - m) * frame in float32, as blend_impl.c
        cv2.multiply(blend, self._m3, dst=blend)
        cv2.multiply(region, self._inv3, dst=region)
        cv2.add(blend, region, dst=blend)
        cv2.min(blend, 255.0, dst=blend)  # clamp (single-channel planes: the scalar applies to all)
        cv2.max(blend, 0.0, dst=blend)
        np.copyto(out[y0:y1, x0:x1].reshape(plane), blend, casting="unsafe")  # float -> uint8 truncates, as the C cast
        return out
