"""Motion vectors to driving keypoints: Ditto's ``MotionStitch`` in numpy (spec vasa.md §4.1, §5.2).

Behaviour matched (not copied) from antgroup/ditto-talkinghead@e9191cf:

* the 265-dim layout: ``core/atomic_components/audio2motion.py`` (``_cvt_LP_motion_info``);
* the per-frame mixing, masks, blink schedule, controls, gaze fix and keypoint transform:
  ``core/atomic_components/motion_stitch.py``; how the online driver calls it (``d0`` is set from
  the first LMDM window, per-frame ``ctrl_info``): ``stream_pipeline_online.py``.

The rotation convention is LivePortrait's (KwaiVGI/LivePortrait ``src/utils/camera.py``).
The stitching *network* is not run here: :meth:`MotionStitch.driving` returns the (x_s, x_d) pair
it takes, and the backend runs ``stitch_network.onnx`` when :attr:`MotionStitch.flag_stitching`.

Info dicts here hold flat float32 arrays: ``scale`` (1,), ``pitch``/``yaw``/``roll`` (66,) bin
logits (or a float, in degrees, once a ``delta_*`` control has converted them, as Ditto does),
``t`` (3,), ``exp`` (63,) and, for source infos, ``kp`` (63,). Inputs shaped like the motion
extractor's outputs ((1,66), (1,1), ...) are accepted and flattened.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

MOTION_DIM = 265
N_KP = 21
N_BINS = 66
# (key, width) in the order of the 265-vector; ``scale`` is stored minus 1 (audio2motion.py)
LAYOUT: tuple[tuple[str, int], ...] = (("scale", 1), ("pitch", 66), ("yaw", 66), ("roll", 66), ("t", 3), ("exp", 63))
MOTION_KEYS = tuple(k for k, _ in LAYOUT)
POSE_KEYS = ("pitch", "yaw", "roll")
SOURCE_KEYS = MOTION_KEYS + ("kp",)
DEFAULT_D_KEYS = ("exp", "pitch", "yaw", "roll", "t")  # Ditto's default for a still image
SCALED_KEYS = ("exp", "pitch", "yaw", "roll")  # the keys the ch_info scale ratio multiplies

EYE_KP = (11, 13, 15, 16, 18)
LIP_KP = (6, 12, 14, 17, 19, 20)

BLINK_OPEN_MIN, BLINK_OPEN_MAX = 60, 100  # frames between blinks when drawn at random
BLINK_LIST_LEN = 3000  # schedule length when the clip length is unknown (streaming): used modulo

# gaze fix: eye keypoint 11 (exp[33], exp[34]) and 15 (exp[45], exp[46]) follow the head
GAZE_X_RATIO, GAZE_Y_RATIO = 0.26, 0.28
GAZE_X_NEAR, GAZE_X_FAR, GAZE_Y = 0.0007, 0.001, -0.001

Info = dict[str, Any]


def bin66_to_degree(pose: Any) -> Any:
    """Degrees from 66 bin logits: sum(softmax(logits) * i) * 3 - 97.5 (motion_stitch.py
    ``bin66_to_degree``). A value of size 1 is already in degrees and passes through as a float,
    as in Ditto once ``delta_pitch`` & co. have converted the pose. (B, 66) gives (B,)."""
    arr = np.asarray(pose, dtype=np.float64)
    if arr.size == 1:
        return float(arr.reshape(()))
    if arr.shape[-1] != N_BINS:
        raise ValueError(f"pose must be {N_BINS} bin logits or one value in degrees, got shape {arr.shape}")
    z = arr - arr.max(axis=-1, keepdims=True)  # stable softmax
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    deg = (p * np.arange(N_BINS)).sum(axis=-1) * 3.0 - 97.5
    return float(deg.reshape(())) if deg.size == 1 else deg


def rotation_matrix(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """(3, 3) float64 R = (Rz(roll) @ Ry(yaw) @ Rx(pitch)).T, angles in degrees; keypoints are rows
    and rotate as ``kp @ R`` (LivePortrait camera.py / motion_stitch.py ``get_rotation_matrix``)."""
    x, y, z = np.deg2rad([float(pitch), float(yaw), float(roll)])
    cx, sx, cy, sy, cz, sz = np.cos(x), np.sin(x), np.cos(y), np.sin(y), np.cos(z), np.sin(z)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return (rz @ ry @ rx).T


def transform_keypoint(info: Mapping[str, Any]) -> np.ndarray:
    """(21, 3) float32 keypoints x = s * (kp @ R + exp), then t_x, t_y added to x and y.
    t_z is NOT used (motion_stitch.py ``transform_keypoint``: "remove z, only apply tx ty")."""
    kp = np.asarray(info["kp"], np.float64).reshape(N_KP, 3)
    exp = np.asarray(info["exp"], np.float64).reshape(N_KP, 3)
    t = np.asarray(info["t"], np.float64).reshape(-1)
    scale = float(np.asarray(info["scale"]).reshape(()))
    rot = rotation_matrix(*(bin66_to_degree(info[k]) for k in POSE_KEYS))
    x = scale * (kp @ rot + exp)
    x[:, :2] += t[:2]
    return x.astype(np.float32)


def motion_to_info(vec: np.ndarray) -> Info:
    """The 265-vector [scale-1 | pitch 66 | yaw 66 | roll 66 | t 3 | exp 63] as an info dict
    (no ``kp``; scale gets its 1 back, as audio2motion.py ``arr2dic`` does)."""
    v = np.asarray(vec, np.float32).reshape(-1)
    if v.size != MOTION_DIM:
        raise ValueError(f"a motion vector has {MOTION_DIM} values, got {v.size}")
    info: Info = {}
    start = 0
    for key, width in LAYOUT:
        info[key] = v[start:start + width].copy()
        start += width
    info["scale"] = info["scale"] + np.float32(1)
    return info


def info_to_motion(info: Mapping[str, Any]) -> np.ndarray:
    """(265,) float32 from an info dict; ``kp`` is ignored (audio2motion.py ``dic2arr``). The pose
    must still be bin logits."""
    parts = []
    for key, width in LAYOUT:
        v = np.asarray(info[key], np.float32).reshape(-1)
        if v.size != width:
            raise ValueError(f"info[{key!r}] has {v.size} values, a motion vector needs {width}")
        parts.append(v - np.float32(1) if key == "scale" else v)
    return np.concatenate(parts)


def as_info(info: Mapping[str, Any], keys: Sequence[str] = SOURCE_KEYS) -> Info:
    """A copy of ``info`` with flat float32 arrays (accepts the extractor's (1, n) shapes)."""
    missing = [k for k in keys if k not in info]
    if missing:
        raise ValueError(f"info lacks {missing}")
    return {k: np.asarray(info[k], np.float32).reshape(-1).copy() for k in keys}


def blink_schedule(n: int, blink_n: int = 15, open_n: int | Sequence[int] = 0,
                   rng: np.random.Generator | None = None) -> np.ndarray:
    """(n,) int: the row of ``delta_eye_arr`` to use at each frame (motion_stitch.py
    ``_set_eye_blink_idx``). A blink plays rows 0..blink_n-1; between blinks row 0.
    ``open_n``: -1 no blink; 0 gaps drawn from 60..100 (inclusive); > 0 a fixed gap; a list: gaps
    in turn. Draw order as Ditto: first gap, last gap, then one per blink. Ditto draws with the
    unseeded ``random`` module; here a numpy Generator makes it reproducible."""
    idx = np.zeros(n, np.int64)
    if isinstance(open_n, (int, np.integer)):
        if open_n < 0:
            return idx
        gaps: list[int] = [int(open_n)] if open_n > 0 else []
    elif isinstance(open_n, (list, tuple)):
        gaps = [int(g) for g in open_n]
    else:
        raise ValueError(f"delta_eye_open_n must be an int or a list, got {type(open_n).__name__}")
    rng = rng if rng is not None else np.random.default_rng()

    def draw() -> int:
        return int(rng.integers(BLINK_OPEN_MIN, BLINK_OPEN_MAX + 1))

    first = gaps[0] if gaps else draw()
    last = gaps[-1] if gaps else draw()
    stop = n - max(last, blink_n)  # leave the end open, so the clip ends with open eyes
    cur, turn = first, 1
    while cur < stop:
        idx[cur:cur + blink_n] = np.arange(blink_n)
        if gaps:
            gap = gaps[turn % len(gaps)]
            turn += 1
        else:
            gap = draw()
        cur += blink_n + gap
    return idx


class MotionStitch:
    """Per-stream driving of one avatar (motion_stitch.py ``MotionStitch.setup`` / ``__call__``,
    for a still image: ``is_image_flag`` True).

    ``x_s_info``: the avatar's source info (motion extractor outputs). ``use_d_keys``: the driven
    keys, a sequence (gain 1) or a {key: gain} dict; None = exp, pitch, yaw, roll, t.
    ``ch_info``: the reference character (cfg ``ch_info``); its first ``x_s_info_lst`` scale over
    the avatar's multiplies the exp/pose gains. ``drive_eye``: eyes follow the motion (or the blink
    sequence ``delta_eye_arr`` (n, 63) when given). ``delta_eye_open_n``: gaps between blinks (see
    :func:`blink_schedule`; 0 is the online pipeline's default). ``overall_ctrl_info``: controls
    applied to every frame unless the frame's own ``ctrl`` sets them (the shipped cfg has
    ``{"delta_pitch": 2}``). ``fade_type`` "", "d0" or "s" with ``fade_alpha`` controls.
    ``rng`` draws the blink schedule; ``n_d`` its length (-1: 3000, used modulo).
    """

    def __init__(
        self,
        x_s_info: Mapping[str, Any],
        *,
        use_d_keys: Sequence[str] | Mapping[str, float] | None = None,
        relative_d: bool = True,
        drive_eye: bool = True,
        delta_eye_arr: np.ndarray | None = None,
        delta_eye_open_n: int | Sequence[int] = 0,
        ch_info: Mapping[str, Any] | None = None,
        overall_ctrl_info: Mapping[str, Any] | None = None,
        fade_type: str = "",
        fade_out_keys: Sequence[str] | None = ("exp",),
        flag_stitching: bool = True,
        n_d: int = -1,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.x_s_info = as_info(x_s_info)
        self.relative_d = relative_d
        self.drive_eye = bool(drive_eye)
        self.flag_stitching = flag_stitching
        self.fade_type = fade_type
        self.fade_out_keys = fade_out_keys
        self.overall_ctrl_info = dict(overall_ctrl_info or {})

        if use_d_keys is None:
            use_d_keys = DEFAULT_D_KEYS
        if isinstance(use_d_keys, Mapping):
            self.gains = {k: float(v) for k, v in use_d_keys.items()}
        else:
            self.gains = {k: 1.0 for k in use_d_keys}
        # a reference character drives the LMDM, so its motion is rescaled to the avatar's size
        self.scale_ratio = 1.0
        if ch_info is not None:
            ch_scale = float(np.asarray(ch_info["x_s_info_lst"][0]["scale"]).reshape(()))
            self.scale_ratio = ch_scale / float(self.x_s_info["scale"][0])
            if self.scale_ratio != 1:
                self.gains = {k: g * (self.scale_ratio if k in SCALED_KEYS else 1.0) for k, g in self.gains.items()}

        self.delta_eye_arr = None
        if delta_eye_arr is not None:
            arr = np.asarray(delta_eye_arr, np.float32)
            self.delta_eye_arr = arr.reshape(arr.shape[0], N_KP * 3)
        # exp = exp_d * a1 + exp_s * a2 + delta_eye * a3 (motion_stitch.py setup: fix_exp_a1..a3)
        lip = np.zeros((N_KP, 3), np.float32)
        lip[list(LIP_KP)] = 1
        eye = np.zeros((N_KP, 3), np.float32)
        eye[list(EYE_KP)] = 1
        driven = lip.copy()
        blink = np.zeros_like(eye)
        if self.drive_eye:
            if self.delta_eye_arr is None:
                driven = driven + eye  # eyes follow the LMDM
            else:
                blink = eye  # eyes play the blink sequence on the source's
        self.exp_a1 = (driven * (1 - blink)).reshape(-1)
        self.exp_a2 = ((1 - driven) + driven * blink).reshape(-1)
        self.exp_a3 = blink.reshape(-1)

        self.blink_idx: np.ndarray | None = None
        if self.drive_eye and self.delta_eye_arr is not None:
            n = BLINK_LIST_LEN if n_d == -1 else n_d
            self.blink_idx = blink_schedule(n, len(self.delta_eye_arr), delta_eye_open_n, rng)

        src = self.x_s_info
        self.pose_s = (bin66_to_degree(src["yaw"]), bin66_to_degree(src["pitch"]))  # (yaw, pitch) degrees
        self.x_s = transform_keypoint(src)
        self.d0: Info | None = None
        self.fade_dst: Info | None = None

    def driving_info(self, vec: np.ndarray, frame_index: int, d0: np.ndarray | Mapping[str, Any] | None = None,
                     ctrl: Mapping[str, Any] | None = None) -> Info:
        """The driving info for one frame, before the keypoint transform. ``vec``: the (265,)
        LMDM output (already clipped, as ``cvt_fmt`` does); ``d0``: the relative-motion anchor
        (the clipped first vector of the first window), a 265-vector or an info dict; None uses
        the stored one (the first ``vec`` seen when ``relative_d``). ``frame_index``: the
        stream's frame count, which picks the blink row (Ditto counts calls)."""
        src = self.x_s_info
        drv = motion_to_info(vec)
        if d0 is not None:
            self.d0 = motion_to_info(d0) if not isinstance(d0, Mapping) else as_info(d0, MOTION_KEYS)
        elif self.d0 is None and self.relative_d:
            self.d0 = {k: v.copy() for k, v in drv.items()}
        kwargs = dict(ctrl or {})
        for k, v in self.overall_ctrl_info.items():
            kwargs.setdefault(k, v)

        # relative mix, in logit space for the pose; undriven keys (scale, kp) from the source
        info: Info = {}
        for k in SOURCE_KEYS:
            if k in self.gains and k in drv:
                if self.d0 is not None:
                    info[k] = src[k] + (drv[k] - self.d0[k]) * np.float32(self.gains[k])
                else:  # absolute (only without any d0; Ditto's online driver always sets one)
                    info[k] = drv[k] * np.float32(self.gains[k])
            else:
                info[k] = src[k].copy()

        delta_eye: Any = 0
        if self.blink_idx is not None:
            delta_eye = self.delta_eye_arr[self.blink_idx[frame_index % len(self.blink_idx)]]
        info["exp"] = info["exp"] * self.exp_a1 + src["exp"] * self.exp_a2 + delta_eye * self.exp_a3

        vad = kwargs.get("vad_alpha", 1)
        if vad < 1:  # whole expression towards the source (Ditto's lip mask there is unused)
            info["exp"] = info["exp"] * np.float32(vad) + src["exp"] * np.float32(1 - vad)

        for k in POSE_KEYS:
            if f"delta_{k}" in kwargs:  # to degrees, plus the offset
                info[k] = bin66_to_degree(info[k]) + float(kwargs[f"delta_{k}"])
        for k in POSE_KEYS:
            if f"alpha_{k}" in kwargs:  # as Ditto: scales whatever the pose holds (logits or degrees)
                info[k] = info[k] * kwargs[f"alpha_{k}"]
        if "delta_exp" in kwargs:
            info["exp"] = info["exp"] + np.asarray(kwargs["delta_exp"], np.float32).reshape(-1)

        if self.fade_type == "d0" and self.fade_dst is None:
            self.fade_dst = _copy_info(info)
        if "fade_alpha" in kwargs and self.fade_type in ("d0", "s"):
            dst = self.fade_dst if self.fade_type == "d0" else src
            alpha = kwargs["fade_alpha"]
            keys = kwargs.get("fade_out_keys", self.fade_out_keys)
            for k in (info.keys() if keys is None else keys):
                if k != "kp":
                    info[k] = info[k] * alpha + dst[k] * (1 - alpha)

        if self.drive_eye:  # gaze fix: the eyes turn a little with the head
            yaw_s, pitch_s = self.pose_s
            dx = (bin66_to_degree(info["yaw"]) - yaw_s) * GAZE_X_RATIO
            dy = (bin66_to_degree(info["pitch"]) - pitch_s) * GAZE_Y_RATIO
            exp = np.array(info["exp"], np.float32)
            near, far = (GAZE_X_NEAR, GAZE_X_FAR) if dx > 0 else (GAZE_X_FAR, GAZE_X_NEAR)
            exp[33] += dx * near
            exp[45] += dx * far
            exp[34] += dy * GAZE_Y
            exp[46] += dy * GAZE_Y
            info["exp"] = exp
        return info

    def driving(self, vec: np.ndarray, frame_index: int, d0: np.ndarray | Mapping[str, Any] | None = None,
                ctrl: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(x_s, x_d), each (21, 3) float32: the source and driving keypoints that the stitching
        network takes (add the batch axis); when :attr:`flag_stitching` is False, x_d goes to
        the warp network as is."""
        return self.x_s, transform_keypoint(self.driving_info(vec, frame_index, d0, ctrl))


def _copy_info(info: Mapping[str, Any]) -> Info:
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in info.items()}
