"""Enrolment stage A: a talking-head video → everything the fit needs (spec ``gaussian.md`` §3.2).

CPU only; the one module of the backend that needs mediapipe. Steps:

1. decode with PyAV at the native rate (above 30 fps every n-th frame, so ≤ 30 fps);
2. track FaceMesh (``engines.face.FaceLandmarker(tracking=True)``); frames without a face are dropped;
3. fixed square crop: the union of the face boxes, ×1.6, square; world coordinates are crop
   pixels at ``res`` (x right, y down, FaceMesh z in x's scale, so weak perspective);
4. generalised Procrustes → canonical rigid shape and a pose per frame, Savitzky–Golay smoothed;
5. drive vector d per frame and the ridge rig V(d) = V0 + Σ φ_k(d)·B_k (``rig.py``);
6. head topology (``topology.py``), masks, JPEG crops and plate frames, the split.

The result, :class:`Prepared`, is one ``.npz`` readable with numpy alone (no pickle, no
mediapipe), so it can travel to the GPU machine (numpy 2.x there).
"""

from __future__ import annotations

import json
import math
import threading
import time
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from engines.gaussian import rig
from engines.mesh.geometry import FACE_OVAL, LIP_LOWER_OUTER, LIP_UPPER_OUTER
from engines.gaussian.topology import N_FACE, HeadTopology, build_topology, mediapipe_triangles, vertices

FORMAT, VERSION = "lipsync-gaussian-prepared", 1

# limits (§3.2 "Input"); the error messages name them
MIN_SECONDS, MIN_SECONDS_TINY, MAX_SECONDS = 30.0, 3.0, 300.0
MAX_FPS = 30.0
MIN_TRACKED = 0.8            # share of frames with a face
MIN_FACE_HEIGHT = 0.5        # face height (landmark box) ≥ this × res, in source pixels
MAX_SHAKE = 0.2              # std of the head's image translation / median face height
MAX_YAW, YAW_QUANTILE = 30.0, 90  # the 90th percentile of |yaw| must stay under 30°
CROP_EXPAND = 1.6
JPEG_QUALITY = 92
PLATE_MAX_SIDE, PLATE_MAX_SECONDS = 1280, 20.0
HOLDOUT_EVERY, TAIL_SHARE = 5, 0.10
MOUTH_DILATE = 0.15          # eye distances
REGION_FEATHER = 0.02        # of res
LIP_RESIDUAL_WARN = 0.03     # eye distances, RMS over the lip vertices

SPLIT_TRAIN, SPLIT_HELDOUT, SPLIT_TAIL = 0, 1, 2
MASKS = ("face", "region", "mouth")

Progress = Callable[[str, float], None]


class EnrolError(Exception):
    """The video cannot be enrolled; the message says what is wrong and what to do."""


# --------------------------------------------------------------------------- the dataset

@dataclass
class Prepared:
    """Everything the fit needs (§3.2 step 8). Frames are the tracked ones, in time order.

    World coordinates are crop pixels at ``res``: a source pixel (u, v) is at
    ((u − crop[0])·k, (v − crop[1])·k) with k = res / (crop[2] − crop[0]); z is FaceMesh's z × k.
    ``pose`` maps canonical head units (outer-eye distance 1) into that space."""

    res: int
    fps: float
    source_size: np.ndarray      # (2,) int: source H, W
    crop: np.ndarray             # (4,) int: x0, y0, x1, y1 in source pixels (square; may pass the borders)
    frame_index: np.ndarray      # (F,) int: decoded-frame number (after decimation) of each frame
    times: np.ndarray            # (F,) float64 s
    crop_jpeg: np.ndarray        # uint8: the crops (res², RGB as JPEG q92), concatenated
    crop_offsets: np.ndarray     # (F+1,) int64 into crop_jpeg
    plate_jpeg: np.ndarray       # uint8: the plate frames (source size, long side ≤ 1280), concatenated
    plate_offsets: np.ndarray    # (P+1,) int64
    plate_frames: np.ndarray     # (P,) int: which frames (0..F-1) the plate holds (≤ 20 s, one stretch)
    plate_scale: float           # plate pixels per source pixel
    landmarks: np.ndarray        # (F, 478, 3) float32, world (crop px)
    pose: np.ndarray             # (F, 8) float32 [s, qw, qx, qy, qz, tx, ty, tz], smoothed
    pose_raw: np.ndarray         # (F, 8) float32, before smoothing
    drive: np.ndarray            # (F, 5) float32 [open, width, closure, blink_l, blink_r]
    blink_range: np.ndarray      # (2, 2) float32 per eye: eyelid gap at blink 1 and at blink 0
    mask_bits: np.ndarray        # (F, 3, res, ceil(res/8)) uint8: packbits of face, region, mouth
    v0: np.ndarray               # (468, 3) float32 canonical face at d = 0
    rig: np.ndarray              # (7, 468, 3) float32 rig basis B
    mp_faces: np.ndarray         # (852, 3) int32 FaceMesh's triangle table
    topology: HeadTopology
    split: np.ndarray            # (F,) int8: 0 train, 1 held out (every 5th), 2 held-out tail block
    meta: dict[str, Any] = field(default_factory=dict)

    # ----------------------------------------------------------------- views
    @property
    def n_frames(self) -> int:
        return len(self.frame_index)

    @property
    def train_idx(self) -> np.ndarray:
        return np.flatnonzero(self.split == SPLIT_TRAIN)

    @property
    def heldout_idx(self) -> np.ndarray:
        """Interleaved held-out frames (every 5th), the ones the gates use."""
        return np.flatnonzero(self.split == SPLIT_HELDOUT)

    @property
    def tail_idx(self) -> np.ndarray:
        """The contiguous last 10 %: reported, not gated."""
        return np.flatnonzero(self.split == SPLIT_TAIL)

    def crops(self, idx: Any = None) -> np.ndarray:
        """RGB uint8 (n, res, res, 3)."""
        idx = np.arange(self.n_frames) if idx is None else np.atleast_1d(idx)
        return np.stack([_decode(self.crop_jpeg, self.crop_offsets, int(i)) for i in idx])

    def plate(self, i: int) -> np.ndarray:
        """RGB uint8 plate frame ``i`` (0..P-1), of frame ``plate_frames[i]``."""
        return _decode(self.plate_jpeg, self.plate_offsets, int(i))

    def masks(self, idx: Any = None) -> np.ndarray:
        """float32 (n, 3, res, res) in [0, 1]: face oval, region (ring 2, feathered by 2 % of res),
        mouth (outer lips dilated by 0.15 eye distances)."""
        idx = np.arange(self.n_frames) if idx is None else np.atleast_1d(idx)
        m = np.unpackbits(self.mask_bits[idx], axis=-1, count=self.res).astype(np.float32)
        sigma = REGION_FEATHER * self.res / 2.0
        for i in range(len(m)):
            m[i, 1] = cv2.GaussianBlur(m[i, 1], (0, 0), sigma)
        return m

    def face_vertices(self, d: np.ndarray) -> np.ndarray:
        """The rig's face (…, 468, 3) at drive vectors d (…, 5), canonical units."""
        return rig.rig_face(self.v0, self.rig, np.asarray(d, np.float32)).astype(np.float32)

    def world_vertices(self, idx: Any = None) -> np.ndarray:
        """All mesh vertices of frames ``idx`` posed into world (crop px): (n, V, 3)."""
        idx = np.arange(self.n_frames) if idx is None else np.atleast_1d(idx)
        v = vertices(self.face_vertices(self.drive[idx]), self.topology)
        return rig.apply_pose(self.pose[idx].astype(np.float64), v.astype(np.float64)).astype(np.float32)

    # ----------------------------------------------------------------- file
    def save(self, path: str | Path) -> None:
        """One .npz (numpy-only; the JPEG byte arrays stored, the rest deflated)."""
        arrays: dict[str, np.ndarray] = {
            "format": np.array(FORMAT), "version": np.array(VERSION), "meta": np.array(json.dumps(self.meta)),
        }
        for f in fields(self):
            if f.name in ("topology", "meta"):
                continue
            arrays[f.name] = np.asarray(getattr(self, f.name))
        arrays.update(self.topology.arrays("topo."))
        path = Path(path)
        tmp = path.with_name(path.name + ".part")
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
            for name, arr in arrays.items():
                method = zipfile.ZIP_STORED if name.endswith("_jpeg") else zipfile.ZIP_DEFLATED
                with zf.open(_info(name, method), "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, arr if arr.flags.c_contiguous else arr.copy(), allow_pickle=False)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "Prepared":
        with np.load(path, allow_pickle=False) as z:
            if "format" not in z or str(z["format"]) != FORMAT or int(z["version"]) != VERSION:
                raise EnrolError(f"{path} is not a prepared dataset of this version ({FORMAT} v{VERSION}): run prepare again")
            kw: dict[str, Any] = {}
            for f in fields(cls):
                if f.name == "topology":
                    kw[f.name] = HeadTopology.from_arrays(z, "topo.")
                elif f.name == "meta":
                    kw[f.name] = json.loads(str(z["meta"]))
                else:
                    kw[f.name] = z[f.name]
        kw["res"], kw["fps"], kw["plate_scale"] = int(kw["res"]), float(kw["fps"]), float(kw["plate_scale"])
        return cls(**kw)


def _info(name: str, method: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = method
    return info


def _decode(blob: np.ndarray, offsets: np.ndarray, i: int) -> np.ndarray:
    bgr = cv2.imdecode(blob[offsets[i]:offsets[i + 1]], cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _encode(rgb: np.ndarray) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise EnrolError("JPEG encoding failed")
    return buf.reshape(-1)


def _pack(chunks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(chunks) + 1, np.int64)
    offsets[1:] = np.cumsum([len(c) for c in chunks])
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)), offsets


# --------------------------------------------------------------------------- decoding

@dataclass
class _Source:
    fps: float          # after decimation
    step: int           # keep every step-th decoded frame
    duration: float     # s, from the container (nan if unknown)
    frames_hint: int    # decoded frames expected after decimation (0 if unknown)


def _probe(video: Path) -> _Source:
    import av

    name = video.name
    try:
        with av.open(str(video)) as container:
            if not container.streams.video:
                raise EnrolError(f"{name} has no video track: use a video file (MP4, MOV, MKV, WebM)")
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            duration = float("nan")
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration:
                duration = container.duration / 1e6
            n = int(stream.frames or 0)
    except EnrolError:
        raise
    except Exception as e:  # PyAV raises many error types for unreadable input
        raise EnrolError(f"cannot read {name} as a video ({type(e).__name__}: {e}): use an MP4, MOV, MKV or WebM file") from e
    step = max(1, math.ceil(rate / MAX_FPS - 1e-3))  # 60 → 30, 50 → 25; ≤ 30 kept as is
    if not n and math.isfinite(duration):
        n = int(round(duration * rate))
    hint = n // step
    return _Source(rate / step, step, duration, hint)


def _frames(video: Path, step: int) -> Any:
    """(decimated index, RGB frame); unreadable streams become :class:`EnrolError`."""
    import av

    try:
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for n, frame in enumerate(container.decode(stream)):
                if n % step == 0:
                    yield n // step, frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as e:
        raise EnrolError(f"cannot decode {video.name} ({e}): re-encode it (e.g. H.264 MP4) and try again") from e


def _check_duration(name: str, seconds: float, tiny: bool) -> None:
    low = MIN_SECONDS_TINY if tiny else MIN_SECONDS
    if seconds > MAX_SECONDS + 0.5:
        raise EnrolError(f"{name} is {seconds:.0f} s long: at most {MAX_SECONDS:.0f} s (5 min) can be enrolled; cut it shorter")
    if seconds < low - 1e-3:
        hint = "" if tiny else " (60 s or more recommended)"
        raise EnrolError(f"{name} is too short ({seconds:.1f} s): enrolment needs at least {low:.0f} s of one "
                         f"person talking{hint}; use a longer video")


# --------------------------------------------------------------------------- geometry helpers

def crop_box(landmarks: np.ndarray) -> np.ndarray:
    """The fixed square crop (x0, y0, x1, y1) int: union of the face boxes, ×1.6, square (§3.2 step 6)."""
    xy = landmarks[..., :2]
    lo, hi = xy.min((0, 1)), xy.max((0, 1))
    centre = 0.5 * (lo + hi)
    side = int(math.ceil(CROP_EXPAND * float((hi - lo).max())))
    x0, y0 = (np.round(centre - side / 2)).astype(int)
    return np.array([x0, y0, x0 + side, y0 + side], np.int64)


def cut_crop(rgb: np.ndarray, box: np.ndarray, res: int) -> np.ndarray:
    """The crop box of a frame (black outside the frame), resized to res² (area filter)."""
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in box)
    pad = max(0, -x0, -y0, x1 - w, y1 - h)
    src = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0)) if pad else rgb
    patch = src[y0 + pad:y1 + pad, x0 + pad:x1 + pad]
    return cv2.resize(patch, (res, res), interpolation=cv2.INTER_AREA)


def _poly(mask: np.ndarray, xy: np.ndarray) -> None:
    cv2.fillPoly(mask, [np.round(xy * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)


def frame_masks(landmarks: np.ndarray, pose: np.ndarray, topology: HeadTopology, res: int) -> np.ndarray:
    """bool (3, res, res): face oval, ring-2 region (posed), mouth (outer lips dilated), in world px.

    The ``- 0.5`` puts polygon vertices on pixel centres' convention (pixel i covers [i, i+1))."""
    out = np.zeros((3, res, res), np.uint8)
    lm = landmarks[:, :2] - 0.5
    _poly(out[0], lm[list(FACE_OVAL)])
    ring2 = rig.apply_pose(pose.astype(np.float64), topology.v0[topology.ring2].astype(np.float64))
    _poly(out[1], ring2[:, :2] - 0.5)
    lips = list(LIP_UPPER_OUTER) + list(LIP_LOWER_OUTER[-2:0:-1])
    _poly(out[2], lm[lips])
    r = MOUTH_DILATE * float(np.linalg.norm(landmarks[rig.EYE_OUTER[1], :2] - landmarks[rig.EYE_OUTER[0], :2]))
    k = max(1, int(round(r)))
    out[2] = cv2.dilate(out[2], cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
    return out.astype(bool)


def split_frames(n: int) -> np.ndarray:
    """(n,) int8: the last 10 % as a contiguous tail block (2), every 5th of the rest held out (1)."""
    split = np.zeros(n, np.int8)
    tail = int(math.ceil(TAIL_SHARE * n))
    split[n - tail:] = SPLIT_TAIL
    head = np.arange(n - tail)
    split[head[head % HOLDOUT_EVERY == HOLDOUT_EVERY - 1]] = SPLIT_HELDOUT
    return split


def plate_stretch(frame_index: np.ndarray, pose: np.ndarray, fps: float) -> np.ndarray:
    """Indices of the plate: ≤ 20 s of consecutive tracked frames, from the longest tracked run,
    the window with the least head motion (std of the translation) (§3.6)."""
    cuts = np.flatnonzero(np.diff(frame_index) != 1) + 1
    run = max(np.split(np.arange(len(frame_index)), cuts), key=len)
    n = min(len(run), max(1, int(round(PLATE_MAX_SECONDS * fps))))
    if n == len(run):
        return run
    stride = max(1, int(round(fps)))
    starts = list(range(0, len(run) - n + 1, stride))
    cost = [pose[run[s:s + n], 5:7].std(0).sum() for s in starts]
    s = starts[int(np.argmin(cost))]
    return run[s:s + n]


def reprojection(prep_pose: np.ndarray, v0: np.ndarray, basis: np.ndarray, drive: np.ndarray,
                 landmarks: np.ndarray) -> np.ndarray:
    """Per-frame mean x-y distance (world px) between the posed rig face and the tracked landmarks."""
    face = rig.rig_face(v0, basis, drive.astype(np.float64))
    proj = rig.apply_pose(prep_pose.astype(np.float64), face)
    return np.linalg.norm(proj[..., :2] - landmarks[:, :N_FACE, :2], axis=-1).mean(-1)


# --------------------------------------------------------------------------- prepare

def prepare(video: Path, res: int = 512, *, tiny: bool = False, progress: Progress | None = None,
            cancel: threading.Event | None = None) -> Prepared:
    """Enrolment stage A (§3.2) for ``video``; raises :class:`EnrolError` for a video that cannot
    be enrolled. ``tiny`` allows clips from 3 s (test-scale heads). ``progress(stage, fraction)``
    gets stages "track", "fit", "crops", "done"; setting ``cancel`` aborts with EnrolError("cancelled")."""
    from engines.face import FaceLandmarker

    video = Path(video)
    name = video.name
    report = progress or (lambda stage, fraction: None)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    def check_cancel() -> None:
        if cancel is not None and cancel.is_set():
            raise EnrolError("cancelled")

    if not video.is_file():
        raise EnrolError(f"{video} does not exist or is not a file")
    src = _probe(video)
    if math.isfinite(src.duration) and src.duration > 0:
        _check_duration(name, src.duration, tiny)  # before decoding anything

    # 1-2. decode and track
    report("track", 0.0)
    kept_idx: list[int] = []
    kept_lm: list[np.ndarray] = []
    n_decoded, size = 0, None
    with FaceLandmarker(tracking=True) as tracker:
        for n, rgb in _frames(video, src.step):
            check_cancel()
            n_decoded, size = n + 1, rgb.shape[:2]
            if n_decoded / src.fps > MAX_SECONDS + 1:
                _check_duration(name, n_decoded / src.fps, tiny)
            faces = tracker.faces(rgb)
            if faces:
                kept_idx.append(n)
                kept_lm.append(faces[0].landmarks)
            if src.frames_hint and n % 10 == 0:
                report("track", min(0.99, n_decoded / src.frames_hint))
    report("track", 1.0)
    timings["track_s"] = time.perf_counter() - t_start
    if n_decoded == 0 or size is None:
        raise EnrolError(f"{name} has no decodable video frames: re-encode it (e.g. H.264 MP4) and try again")
    _check_duration(name, n_decoded / src.fps, tiny)
    if not kept_lm:
        raise EnrolError(f"no face was found in {name}: use a video of one person facing the camera, "
                         "with the whole face visible")
    share = len(kept_lm) / n_decoded
    if share < MIN_TRACKED:
        raise EnrolError(f"a face was found in only {100 * share:.0f}% of the frames of {name} (at least "
                         f"{100 * MIN_TRACKED:.0f}% needed): use a video where the face stays in view, unoccluded")
    frame_index = np.asarray(kept_idx, np.int64)
    lm_src = np.stack(kept_lm).astype(np.float64)

    # face size and the crop
    face_h = float(np.median(lm_src[:, :N_FACE, 1].max(1) - lm_src[:, :N_FACE, 1].min(1)))
    if face_h < MIN_FACE_HEIGHT * res:
        raise EnrolError(f"the face is only {face_h:.0f} px tall in {name}: {res}x{res} renders need a face "
                         f"at least {MIN_FACE_HEIGHT * res:.0f} px tall; use a closer or higher-resolution video "
                         "(or a smaller --res)")
    box = crop_box(lm_src[:, :N_FACE])
    k = res / float(box[2] - box[0])
    lm = (lm_src - np.array([box[0], box[1], 0.0])) * k  # world = crop px; z scaled alike

    # 3. canonical shape and pose
    t0 = time.perf_counter()
    report("fit", 0.0)
    _, pose_raw = rig.procrustes(lm)
    pose = rig.smooth_poses(pose_raw, frame_index)
    shake = float(np.linalg.norm(pose[:, 5:7].std(0))) / (face_h * k)
    if shake > MAX_SHAKE:
        raise EnrolError(f"the head moves too much in {name} (translation std {shake:.2f} of the face height, "
                         f"at most {MAX_SHAKE}): use a video from a fixed camera with a steadier head")
    angles = rig.yaw_pitch_roll(pose)
    yaw = float(np.percentile(np.abs(angles[:, 0]), YAW_QUANTILE))
    if yaw > MAX_YAW:
        raise EnrolError(f"the face is turned too far from the camera in {name} (|yaw| {yaw:.0f} deg or more in "
                         f"{100 - YAW_QUANTILE}% of the frames, at most {MAX_YAW:.0f}): use a video of a frontal face")
    aligned = rig.aligned_landmarks(lm[:, :N_FACE], pose)

    # 4-5. drive vector and rig
    gaps = rig.eye_gaps(lm)
    ranges = rig.blink_range(gaps)
    drive = rig.drive_vectors(lm, ranges)
    v0, basis, r2 = rig.fit_rig(aligned, drive)
    resid = rig.rig_residual(aligned, drive, v0, basis)
    warnings = []
    lip_resid = float(resid[list(rig.REGIONS["mouth"])].mean())
    if lip_resid > LIP_RESIDUAL_WARN:
        warnings.append(f"the rig explains the lips poorly (RMS residual {lip_resid:.3f} eye distances): "
                        "the lip tracking may be bad (occlusion, blur, profile views)")
    # the mouth patch must cover the hole in every frame and over the clip's open x width box
    grid = np.array([[o, w_, 0, 0, 0] for o in np.percentile(drive[:, 0], [1, 50, 99])
                     for w_ in np.percentile(drive[:, 1], [1, 50, 99])])
    every = drive[:: max(1, len(drive) // 500)]
    mouth_shapes = rig.rig_face(v0, basis, np.concatenate([every, grid]).astype(np.float64))
    mp_faces = mediapipe_triangles()
    topo = build_topology(v0, mouth_shapes, faces=mp_faces)
    err = reprojection(pose, v0, basis, drive, lm)
    eye = float(np.median(np.linalg.norm(lm[:, 263, :2] - lm[:, 33, :2], axis=1)))
    report("fit", 1.0)
    timings["fit_s"] = time.perf_counter() - t0

    # 6-8. crops, plate, masks
    t0 = time.perf_counter()
    split = split_frames(len(frame_index))
    plate_frames = plate_stretch(frame_index, pose, src.fps)
    plate_set = dict(zip(frame_index[plate_frames].tolist(), range(len(plate_frames))))
    where = dict(zip(frame_index.tolist(), range(len(frame_index))))
    h, w = size
    plate_scale = min(1.0, PLATE_MAX_SIDE / max(h, w))
    crops: list[np.ndarray | None] = [None] * len(frame_index)
    plates: list[np.ndarray | None] = [None] * len(plate_frames)
    report("crops", 0.0)
    for n, rgb in _frames(video, src.step):
        check_cancel()
        i = where.get(n)
        if i is None:
            continue
        crops[i] = _encode(cut_crop(rgb, box, res))
        j = plate_set.get(n)
        if j is not None:
            plate = rgb if plate_scale == 1.0 else cv2.resize(
                rgb, (round(w * plate_scale), round(h * plate_scale)), interpolation=cv2.INTER_AREA)
            plates[j] = _encode(plate)
        if i % 10 == 0:
            report("crops", 0.9 * i / len(frame_index))
    if any(c is None for c in crops) or any(p is None for p in plates):
        raise EnrolError(f"{name} decoded differently the second time: re-encode it (e.g. H.264 MP4) and try again")
    masks = np.stack([frame_masks(lm[i], pose[i], topo, res) for i in range(len(frame_index))])
    report("crops", 1.0)
    timings["crops_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start

    crop_jpeg, crop_offsets = _pack(crops)  # type: ignore[arg-type]
    plate_jpeg, plate_offsets = _pack(plates)  # type: ignore[arg-type]
    import mediapipe  # already loaded by the tracker

    meta = {
        "source": name, "source_frames": n_decoded, "source_fps": src.fps * src.step, "decimation": src.step,
        "tracked_share": share, "face_height_px": face_h, "eye_distance_world": eye,
        "shake": shake, "yaw_p90_deg": yaw, "yaw_median_deg": float(np.median(angles[:, 0])),
        "rig_r2": r2, "rig_residual": {k_: float(resid[list(v)].mean()) for k_, v in rig.REGIONS.items()},
        "reprojection_px": {"median": float(np.median(err)), "p95": float(np.percentile(err, 95)),
                            "median_eye": float(np.median(err) / eye)},
        "open_range": [float(np.percentile(drive[:, 0], q)) for q in (1, 5, 50, 95, 99)],
        "mouth_grid": grid.tolist(), "drive": list(rig.DRIVE), "rig_features": list(rig.FEATURES),
        "masks": list(MASKS), "warnings": warnings, "timings": timings, "tiny": tiny,
        "mediapipe": getattr(mediapipe, "__version__", "?"),
    }
    report("done", 1.0)
    return Prepared(
        res=res, fps=src.fps, source_size=np.array([h, w], np.int64), crop=box, frame_index=frame_index,
        times=frame_index / src.fps, crop_jpeg=crop_jpeg, crop_offsets=crop_offsets,
        plate_jpeg=plate_jpeg, plate_offsets=plate_offsets, plate_frames=plate_frames.astype(np.int64),
        plate_scale=plate_scale, landmarks=lm.astype(np.float32), pose=pose.astype(np.float32),
        pose_raw=pose_raw.astype(np.float32), drive=drive, blink_range=ranges.astype(np.float32),
        mask_bits=np.packbits(masks, axis=-1), v0=v0.astype(np.float32), rig=basis.astype(np.float32),
        mp_faces=mp_faces, topology=topo, split=split, meta=meta,
    )
