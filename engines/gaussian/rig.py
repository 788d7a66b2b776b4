"""Head pose, drive vector and the per-person linear rig (spec ``gaussian.md`` §3.2 steps 3-5).

* :func:`umeyama`: the least-squares similarity dst ≈ s·R·src + t (Umeyama 1991), batched.
* :func:`procrustes`: generalised Procrustes over the frames on a rigid landmark subset, giving a
  canonical frame (outer-eye distance 1, origin at the subset centroid, x along the eye line,
  y from forehead 10 toward chin 152, z = x × y away from the camera) and a pose per frame.
* :func:`smooth_poses`: Savitzky–Golay (window 7, order 2) on s, t and the quaternion.
* :func:`drive_vectors`: d = [open, width, closure, blink_l, blink_r] per frame.
* :func:`rig_features` / :func:`fit_rig`: φ(d) (7 columns) and the ridge rig V(d) = V0 + Σ φ_k B_k.

A pose is 8 numbers [s, qw, qx, qy, qz, tx, ty, tz]: a point p of canonical space lands at
s·R(q)·p + t. :func:`pose_matrix` and :func:`apply_pose` take numpy or torch (differentiable).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engines.gaussian.topology import N_FACE, _broadcast, _cat, _like, _stack

# rigid FaceMesh landmarks: forehead, nose bridge and tip, eye corners, temples (no lips, jaw,
# chin, eyelids or brows: they move with expression)
RIGID = (10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1,      # midline: forehead, bridge, nose tip
         108, 337, 109, 338, 67, 297, 69, 299, 104, 333,  # forehead
         33, 133, 362, 263,                              # outer and inner eye corners
         21, 251, 54, 284, 103, 332, 162, 389, 127, 356, 234, 454)  # temples
EYE_OUTER = (33, 263)
FOREHEAD, CHIN = 10, 152
DRIVE = ("open", "width", "closure", "blink_l", "blink_r")
FEATURES = ("open", "width", "closure", "blink_l", "blink_r", "open^2", "open*width")
# image-left eye (landmarks 33..133) first, image-right second; 1 = closed
BLINK_PAIRS = ((159, 145), (386, 374))  # = engines.mesh.geometry.EYE_MEASURE_PAIRS
BLINK_MIN_SPAN = 0.5  # the blink scale spans at least half the open-eye gap (clips without blinks)
RIDGE = 1e-3  # λ = RIDGE·F

# regions for the rig's R² (FaceMesh indices)
LIPS_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 146, 91, 181, 84, 17, 314, 405, 321, 375)
LIPS_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 95, 88, 178, 87, 14, 317, 402, 318, 324)
LOWER_LIP = (146, 91, 181, 84, 17, 314, 405, 321, 375, 95, 88, 178, 87, 14, 317, 402, 318, 324)
JAW = (132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361)
EYELIDS = (246, 161, 160, 159, 158, 157, 173, 7, 163, 144, 145, 153, 154, 155,
           466, 388, 387, 386, 385, 384, 398, 249, 390, 373, 374, 380, 381, 382)
REGIONS: dict[str, tuple[int, ...]] = {
    "mouth": tuple(sorted(set(LIPS_OUTER + LIPS_INNER))),
    "lower_lip": LOWER_LIP,
    "jaw": JAW,
    "eyes": EYELIDS,
    "all": tuple(range(N_FACE)),
}


# --------------------------------------------------------------------------- similarity fits

def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares similarity with dst ≈ s·R·src + t, for point sets (…, N, D).

    Returns s (…,), R (…, D, D) with det +1, t (…, D)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(-2), dst.mean(-2)
    xs, xd = src - mu_s[..., None, :], dst - mu_d[..., None, :]
    n = src.shape[-2]
    cov = np.einsum("...ni,...nj->...ij", xd, xs) / n
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones_like(sig)
    sign[..., -1] = np.where(np.linalg.det(u) * np.linalg.det(vt) < 0, -1.0, 1.0)
    rot = u @ (sign[..., :, None] * vt)
    var_s = (xs * xs).sum((-1, -2)) / n
    scale = (sig * sign).sum(-1) / var_s if with_scale else np.ones(src.shape[:-2])
    t = mu_d - scale[..., None] * np.einsum("...ij,...j->...i", rot, mu_s)
    return scale, rot, t


def _eye_normalise(ref: np.ndarray, rigid: tuple[int, ...]) -> np.ndarray:
    """Rigid-subset points recentred on their centroid, scaled to an outer-eye distance of 1."""
    ref = ref - ref.mean(0)
    a, b = rigid.index(EYE_OUTER[0]), rigid.index(EYE_OUTER[1])
    return ref / np.linalg.norm(ref[b] - ref[a])


def frontal_rotation(face: np.ndarray) -> np.ndarray:
    """Rotation Q taking a face (468+, 3) into the canonical axes: x along 33→263, y along 10→152
    made orthogonal to x, z = x × y (away from the camera)."""
    x = face[EYE_OUTER[1]] - face[EYE_OUTER[0]]
    x = x / np.linalg.norm(x)
    y = face[CHIN] - face[FOREHEAD]
    y = y - (y @ x) * x
    y = y / np.linalg.norm(y)
    return np.stack([x, y, np.cross(x, y)])  # rows: the new axes, so Q @ p is p in them


def procrustes(landmarks: np.ndarray, rigid: tuple[int, ...] = RIGID, rounds: int = 3
               ) -> tuple[np.ndarray, np.ndarray]:
    """Generalised Procrustes on the rigid subset of ``landmarks`` (F, ≥468, 3).

    Returns (ref (K, 3) the canonical rigid subset, poses (F, 8) canonical → landmark space, raw)."""
    pts = np.asarray(landmarks, np.float64)
    x = pts[:, list(rigid)]
    ref = _eye_normalise(x[len(x) // 2], rigid)
    for _ in range(rounds):
        s, r, t = umeyama(ref, x)
        aligned = np.einsum("fji,fnj->fni", r, x - t[:, None]) / s[:, None, None]
        ref = _eye_normalise(aligned.mean(0), rigid)
    # canonical axes from the median face, then one last fit against the rotated reference
    s, r, t = umeyama(ref, x)
    face = np.median(np.einsum("fji,fnj->fni", r, pts[:, :N_FACE] - t[:, None]) / s[:, None, None], axis=0)
    q = frontal_rotation(face - face[list(rigid)].mean(0))
    ref = _eye_normalise(ref @ q.T, rigid)
    s, r, t = umeyama(ref, x)
    return ref, poses_from(s, r, t)


def aligned_landmarks(landmarks: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """Ṽ_f = R_fᵀ(L_f − t_f)/s_f: landmarks (F, N, 3) brought into canonical space."""
    s, r, t = pose_parts(np.asarray(poses, np.float64))
    return np.einsum("fji,fnj->fni", r, np.asarray(landmarks, np.float64) - t[:, None]) / s[:, None, None]


# --------------------------------------------------------------------------- poses

def matrix_to_quat(r: np.ndarray) -> np.ndarray:
    """Rotation matrices (…, 3, 3) to unit quaternions (…, 4) wxyz, qw ≥ 0 (Shepperd's method)."""
    r = np.asarray(r, np.float64)
    m = r.reshape(-1, 3, 3)
    q = np.empty((len(m), 4))
    tr = np.trace(m, axis1=1, axis2=2)
    cand = np.stack([tr, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], 1)
    k = cand.argmax(1)
    for i, (mi, ki) in enumerate(zip(m, k)):
        if ki == 0:
            w = np.sqrt(1 + tr[i]) / 2
            q[i] = [w, (mi[2, 1] - mi[1, 2]) / (4 * w), (mi[0, 2] - mi[2, 0]) / (4 * w), (mi[1, 0] - mi[0, 1]) / (4 * w)]
        elif ki == 1:
            x = np.sqrt(1 + mi[0, 0] - mi[1, 1] - mi[2, 2]) / 2
            q[i] = [(mi[2, 1] - mi[1, 2]) / (4 * x), x, (mi[0, 1] + mi[1, 0]) / (4 * x), (mi[0, 2] + mi[2, 0]) / (4 * x)]
        elif ki == 2:
            y = np.sqrt(1 - mi[0, 0] + mi[1, 1] - mi[2, 2]) / 2
            q[i] = [(mi[0, 2] - mi[2, 0]) / (4 * y), (mi[0, 1] + mi[1, 0]) / (4 * y), y, (mi[1, 2] + mi[2, 1]) / (4 * y)]
        else:
            z = np.sqrt(1 - mi[0, 0] - mi[1, 1] + mi[2, 2]) / 2
            q[i] = [(mi[1, 0] - mi[0, 1]) / (4 * z), (mi[0, 2] + mi[2, 0]) / (4 * z), (mi[1, 2] + mi[2, 1]) / (4 * z), z]
    q *= np.where(q[:, :1] < 0, -1.0, 1.0)
    return q.reshape(r.shape[:-2] + (4,))


def quat_to_matrix(q: Any) -> Any:
    """Quaternions (…, 4) wxyz (normalised here) to rotation matrices (…, 3, 3); numpy or torch."""
    norm = (q * q).sum(-1) ** 0.5
    w, x, y, z = (q[..., i] / norm for i in range(4))
    rows = [
        _stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        _stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        _stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ]
    return _stack(rows, -2)


def poses_from(s: np.ndarray, r: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(F,) scales, (F,3,3) rotations, (F,3) translations → (F, 8) poses."""
    return np.concatenate([np.asarray(s, np.float64)[:, None], matrix_to_quat(r), np.asarray(t, np.float64)], 1)


def pose_parts(poses: Any) -> tuple[Any, Any, Any]:
    """(s (…,), R (…,3,3), t (…,3)) of poses (…, 8)."""
    return poses[..., 0], quat_to_matrix(poses[..., 1:5]), poses[..., 5:8]


def pose_matrix(poses: Any) -> Any:
    """Poses (…, 8) as 4×4 similarity matrices [[s·R, t], [0, 1]] (numpy or torch)."""
    s, r, t = pose_parts(poses)
    top = _cat([s[..., None, None] * r, t[..., :, None]], -1)  # (…, 3, 4)
    bottom = _broadcast(_like(np.array([[0.0, 0.0, 0.0, 1.0]]), top), tuple(top.shape[:-2]))
    return _cat([top, bottom], -2)


def apply_pose(poses: Any, points: Any) -> Any:
    """s·R·p + t for points (…, N, 3) and poses (…, 8) (numpy or torch, differentiable)."""
    s, r, t = pose_parts(poses)
    rotated = (points[..., :, None, :] * r[..., None, :, :]).sum(-1)  # R @ p for every point
    return s[..., None, None] * rotated + t[..., None, :]


def yaw_pitch_roll(poses: np.ndarray) -> np.ndarray:
    """(F, 3) degrees: yaw about the head's vertical axis (0 = facing the camera), pitch, roll."""
    r = quat_to_matrix(np.asarray(poses, np.float64)[:, 1:5])
    fwd = r[:, :, 2]  # where the canonical z (into the face) points
    yaw = np.degrees(np.arctan2(fwd[:, 0], fwd[:, 2]))
    pitch = np.degrees(np.arctan2(-fwd[:, 1], np.hypot(fwd[:, 0], fwd[:, 2])))
    roll = np.degrees(np.arctan2(r[:, 1, 0], r[:, 0, 0]))
    return np.stack([yaw, pitch, roll], 1)


def smooth_poses(poses: np.ndarray, frame_index: np.ndarray | None = None, window: int = 7, order: int = 2) -> np.ndarray:
    """Savitzky–Golay smoothing of s, t and the quaternion, per run of consecutive frames
    (``frame_index`` tells where frames were dropped); quaternions are made sign-continuous
    first and renormalised after. WHY: FaceMesh jitter in the pose turns into blur in training."""
    from scipy.signal import savgol_filter

    p = np.asarray(poses, np.float64).copy()
    idx = np.arange(len(p)) if frame_index is None else np.asarray(frame_index)
    cuts = np.flatnonzero(np.diff(idx) != 1) + 1
    for run in np.split(np.arange(len(p)), cuts):
        if len(run) < order + 2:
            continue
        q = p[run, 1:5]
        for i in range(1, len(q)):
            if q[i] @ q[i - 1] < 0:
                q[i] = -q[i]
        p[run, 1:5] = q
        w = min(window, len(run) if len(run) % 2 else len(run) - 1)
        p[run] = savgol_filter(p[run], w, order, axis=0)
        p[run, 1:5] /= np.linalg.norm(p[run, 1:5], axis=1, keepdims=True)
    return p


# --------------------------------------------------------------------------- drive vector

def eye_gaps(landmarks: np.ndarray) -> np.ndarray:
    """(F, 2) eyelid gap of each eye (159-145, 386-374) over the outer-eye distance."""
    lm = np.asarray(landmarks, np.float64)
    scale = np.linalg.norm(lm[:, EYE_OUTER[1], :2] - lm[:, EYE_OUTER[0], :2], axis=1)
    gaps = [np.linalg.norm(lm[:, u, :2] - lm[:, d, :2], axis=1) for u, d in BLINK_PAIRS]
    return np.stack(gaps, 1) / np.maximum(scale, 1e-6)[:, None]


def blink_range(gaps: np.ndarray) -> np.ndarray:
    """(2, 2) per eye [gap that maps to closed (1), gap that maps to open (0)]: the clip's 5th and
    95th percentiles, the span widened to at least ``BLINK_MIN_SPAN`` of the open gap.

    WHY the floor: in a clip without a blink p5 is just a narrow-open eye; mapping it to 1 would
    call every squint a full blink."""
    p5, p95 = np.percentile(gaps, 5, axis=0), np.percentile(gaps, 95, axis=0)
    closed = np.minimum(p5, p95 * (1 - BLINK_MIN_SPAN))
    return np.stack([closed, p95], 1)


def blinks(gaps: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """Eyelid gaps (F, 2) to blink values in [0, 1] (1 = closed) by ``blink_range``."""
    closed, open_ = ranges[:, 0], ranges[:, 1]
    return np.clip((open_ - gaps) / np.maximum(open_ - closed, 1e-6), 0.0, 1.0)


def mouth_measures(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(opening, width) per frame as the project measures real clips: ``engines.face.mouth_opening``
    and mouth-corner distance 61-291 over the eye distance 33-263 (``audio2mouth.clips.extract_track``)."""
    from engines.face import MOUTH_CORNERS, face_scale, mouth_opening

    a, b = MOUTH_CORNERS
    opening = np.array([mouth_opening(lm) for lm in landmarks], np.float64)
    width = np.array([np.linalg.norm(lm[a, :2] - lm[b, :2]) / max(face_scale(lm), 1e-6) for lm in landmarks], np.float64)
    return opening, width


def drive_vectors(landmarks: np.ndarray, ranges: np.ndarray | None = None) -> np.ndarray:
    """d = [open, width, closure, blink_l, blink_r] per frame (F, 5) float32 from landmarks (F, 478, 3).

    ``open``/``width``/``closure`` are exactly the targets the shipped audio-to-mouth model was
    trained on for real clips (``engines.audio2mouth.clips.clip_targets``: open = opening/0.35
    clipped to [0, 1], width = 8·(w − the clip's median w) clipped to [−1, 1], closure 0). Blinks:
    :func:`blinks` with ``ranges`` (default: this clip's :func:`blink_range`)."""
    from engines.audio2mouth.clips import Clip, clip_targets  # the one definition, reused

    lm = np.asarray(landmarks)
    opening, width = mouth_measures(lm)
    clip = Clip("", np.zeros(0, np.float32), np.arange(len(lm), dtype=np.float64), opening, width)
    mouth, _ = clip_targets(clip)
    gaps = eye_gaps(lm)
    b = blinks(gaps, blink_range(gaps) if ranges is None else ranges)
    return np.concatenate([mouth, b], 1).astype(np.float32)


# --------------------------------------------------------------------------- the rig

def rig_features(d: Any) -> Any:
    """φ(d) (…, 7) = [open, width, closure, blink_l, blink_r, open², open·width] (numpy or torch)."""
    o, w = d[..., 0], d[..., 1]
    return _stack([o, w, d[..., 2], d[..., 3], d[..., 4], o * o, o * w], -1)


def rig_face(v0: Any, basis: Any, d: Any) -> Any:
    """Face vertices (…, 468, 3) = V0 + Σ_k φ_k(d)·B_k."""
    phi = rig_features(d)
    return v0 + (phi[..., :, None, None] * basis).sum(-3)


def fit_rig(aligned: np.ndarray, d: np.ndarray, ridge: float = RIDGE
            ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Ridge regression of the aligned face landmarks (F, 468, 3) on φ(d) (F, 5) (§3.2 step 5).

    Returns (V0 (468, 3) the face at d = 0, B (7, 468, 3), R² per region of :data:`REGIONS`).
    λ = ridge·F on the features; the intercept (V0) is not penalised.

    WHY an intercept rather than V0 = the median face: the median frame talks (median open is
    about 0.1-0.3), so with V0 fixed at the median d = 0 would not close the mouth."""
    y = np.asarray(aligned, np.float64)[:, :N_FACE].reshape(len(aligned), -1)
    phi = rig_features(np.asarray(d, np.float64))
    mu_phi, mu_y = phi.mean(0), y.mean(0)
    pc, yc = phi - mu_phi, y - mu_y
    lam = ridge * len(y)
    basis = np.linalg.solve(pc.T @ pc + lam * np.eye(phi.shape[1]), pc.T @ yc)
    v0 = mu_y - mu_phi @ basis
    resid = (yc - pc @ basis).reshape(len(y), N_FACE, 3)
    total = yc.reshape(len(y), N_FACE, 3)
    r2 = {}
    for name, idx in REGIONS.items():
        ss_res = float((resid[:, list(idx)] ** 2).sum())
        ss_tot = float((total[:, list(idx)] ** 2).sum())
        r2[name] = 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0
    return v0.reshape(N_FACE, 3), basis.reshape(-1, N_FACE, 3), r2


def rig_residual(aligned: np.ndarray, d: np.ndarray, v0: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """(468,) RMS residual per vertex of the rig over the frames (canonical units = eye distances)."""
    pred = rig_face(v0, basis, np.asarray(d, np.float64))
    err = np.asarray(aligned, np.float64)[:, :N_FACE] - pred
    return np.sqrt((err ** 2).sum(-1).mean(0))
