"""LMDM motion diffusion for the `vasa` backend, in numpy (spec vasa.md §4).

Behaviour matched (not copied) from antgroup/ditto-talkinghead@e9191cf:
``core/models/lmdm.py`` (schedule, time pairs, the η = 1 update), ``core/models/modules/LMDM.py``
(``predict_noise_from_start``), ``core/atomic_components/condition_handler.py`` (the condition
rows, emotion), ``core/atomic_components/audio2motion.py`` (fuse, smoothing, ``kp_cond``, clip)
and ``stream_pipeline_online.py`` (the online windowing loop).

The network itself is not here: :func:`sample` takes a ``denoise`` callable (the backend wraps
``lmdm_v0.4_hubert.onnx``), batched over streams. :class:`OnlineMotion` is one stream's state
machine: it hands out the next window due (:meth:`OnlineMotion.pending`) so that the backend can
sample the windows of several streams in one batch, and takes the result back
(:meth:`OnlineMotion.accept`), which emits motion vectors by video frame number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

# --- the 265-dim motion vector (§4.1): [scale-1 | pitch 66 | yaw 66 | roll 66 | t 3 | exp 63] ---
MOTION_DIM = 265
SCALE = slice(0, 1)  # stored minus 1
PITCH = slice(1, 67)
YAW = slice(67, 133)
ROLL = slice(133, 199)
TRANS = slice(199, 202)
EXP = slice(202, 265)
POSE_DIMS = 202  # scale, pose and t: smoothed between windows and carried in kp_cond
FEATURE_DIM = 1024
SEQ_FRAMES = 80  # L: frames per LMDM window
MAX_KEEP = 2 * SEQ_FRAMES  # res is trimmed to this (160, as Ditto); features are kept fewer
ALLOWED_OVERLAPS = (70, 75)  # V = L - O must be a multiple of HuBERT's 5-frame steps (§4.4)
SAMPLE_RATE = 16000
FRAME_SAMPLES = 640

# --- diffusion (§4.3) ---
N_TIMESTEPS = 1000
COSINE_S = 8e-3
ETA = 1.0

# --- conditioning (§4.2) ---
EMOTIONS = ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise", "Contempt")
NEUTRAL = 4
EMO_DIM, EYE_OPEN_DIM, EYE_BALL_DIM, SC_DIM = 8, 2, 6, 63
EMO_LOGIT = 8.0

# denoise(x (B,80,265), cond_frame (B,265), cond (B,80,C), time_cond (B,) int64) -> x_start (B,80,265)
Denoiser = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


# ------------------------------------------------------------------------------------------
# schedule and sampler


def alphas_cumprod(n_timestep: int = N_TIMESTEPS, cosine_s: float = COSINE_S) -> np.ndarray:
    """ᾱ_t of the cosine schedule, (n_timestep,) float32 (§4.3).

    Betas come from the cosine in float64, clipped to [0, 0.999], then float32 as Ditto's
    ``torch.Tensor`` makes them; torch's CPU cumprod accumulates float32 in double, so this does
    too (bit-identical to Ditto's table).
    """
    t = np.arange(n_timestep + 1, dtype=np.float64) / n_timestep + cosine_s
    f = np.cos(t / (1 + cosine_s) * np.pi / 2) ** 2
    f = f / f[0]
    betas = np.clip(1 - f[1:] / f[:-1], 0, 0.999).astype(np.float32)
    alphas = (np.float32(1) - betas).astype(np.float64)
    return np.cumprod(alphas).astype(np.float32)


def _torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    # torch.linspace in float32: the first half counts up from start, the second down from end
    step = np.float32((end - start) / (steps - 1)) if steps > 1 else np.float32(0)
    idx = np.arange(steps)
    half = steps // 2
    up = np.float32(start) + step * idx.astype(np.float32)
    down = np.float32(end) - step * (steps - 1 - idx).astype(np.float32)
    return np.where(idx < half, up, down).astype(np.float32)


def sampling_times(steps: int, n_timestep: int = N_TIMESTEPS) -> list[tuple[int, int]]:
    """The (t, t_next) pairs of the DDIM loop: the model is called at each t; t_next = -1 ends.

    ``int(linspace(-1, 999, S+1))`` reversed (truncated toward zero, as ``tensor.int()``): for
    S = 10 the calls are at 999, 899, ..., 99; for S = 50 at 999, 979, ..., 19.
    """
    if steps < 1:
        raise ValueError(f"sampling steps must be >= 1, got {steps}")
    times = np.trunc(_torch_linspace_f32(-1, n_timestep - 1, steps + 1)).astype(np.int64)
    rev = [int(t) for t in times[::-1]]
    return list(zip(rev[:-1], rev[1:]))


@dataclass(frozen=True)
class SamplerPlan:
    """Per-step constants of the S-step η = 1 sampler (§4.3), float32 like Ditto's.

    ``sigma``, ``c`` and ``sqrt_alpha_next`` have S-1 entries (the last step returns x₀);
    ``recip1m`` = √(1/(1-ᾱ_t)) and ``recipm1`` = √(1/ᾱ_t - 1) have S (for ε̂ from x₀).
    """

    steps: int
    time_pairs: tuple[tuple[int, int], ...]
    time_cond: np.ndarray  # (S,) int64
    sqrt_alpha_next: np.ndarray
    sigma: np.ndarray
    c: np.ndarray
    recip1m: np.ndarray
    recipm1: np.ndarray

    @property
    def n_noise(self) -> int:
        """How many z's a stream draws at setup: one per step that is not the last."""
        return self.steps - 1


def sampler_plan(steps: int, alphas: np.ndarray | None = None) -> SamplerPlan:
    """The constants for ``steps`` sampling steps (``sampling_timesteps``: 10 online)."""
    ac = alphas_cumprod() if alphas is None else np.asarray(alphas, np.float32)
    pairs = sampling_times(steps, len(ac))
    one = np.float32(1)
    sqrt_an, sigma, c = [], [], []
    for t, t_next in pairs:
        if t_next < 0:
            continue
        a, an = ac[t], ac[t_next]
        # float32 scalar arithmetic, as Ditto's (numpy 2 / torch float32)
        s = np.float32(ETA) * np.sqrt((one - a / an) * (one - an) / (one - a))
        sqrt_an.append(np.sqrt(an))
        sigma.append(s)
        # c² = 1 - ᾱ_next - σ² is > 0 but tiny at t = 999, where float32 can round it below 0
        # (S = 3 gives NaN in Ditto); clamp it there and only there
        c.append(np.sqrt(np.maximum(one - an - s * s, np.float32(0))))
    a_t = ac[[t for t, _ in pairs]]
    return SamplerPlan(
        steps=steps,
        time_pairs=tuple(pairs),
        time_cond=np.array([t for t, _ in pairs], np.int64),
        sqrt_alpha_next=np.array(sqrt_an, np.float32),
        sigma=np.array(sigma, np.float32),
        c=np.array(c, np.float32),
        recip1m=np.sqrt(one / (one - a_t)).astype(np.float32),
        recipm1=np.sqrt(one / a_t - one).astype(np.float32),
    )


def draw_step_noise(rng: np.random.Generator, plan: SamplerPlan) -> np.ndarray:
    """The z's of one stream, (S-1, 80, 265) float32: drawn once at setup, reused every window."""
    return rng.standard_normal((plan.n_noise, SEQ_FRAMES, MOTION_DIM)).astype(np.float32)


def draw_x_T(rng: np.random.Generator) -> np.ndarray:
    """A window's starting noise x_T ~ N(0, I), (80, 265) float32: fresh for each window."""
    return rng.standard_normal((SEQ_FRAMES, MOTION_DIM)).astype(np.float32)


def sample(
    denoise: Denoiser,
    x_T: np.ndarray,
    cond: np.ndarray,
    cond_frame: np.ndarray,
    zs: np.ndarray,
    plan: SamplerPlan,
) -> np.ndarray:
    """Run the S-step sampler for B windows in lockstep; returns x₀ (B, 80, 265) (§4.3).

    ``x_T`` (B,80,265), ``cond`` (B,80,C), ``cond_frame`` (B,265); ``zs`` is (S-1,80,265)
    shared by the batch or (B,S-1,80,265), one set per stream. Each step is
    ``x ← x₀·√ᾱ_next + c·ε̂ + σ·z``; the last returns x₀.

    ε̂ is computed here from the x₀ ``denoise`` returns, ε̂ = x_t·√(1/(1-ᾱ_t)) - x₀/√(1/ᾱ_t - 1),
    and the graph's own ``pred_noise`` is not used: the ONNX graph computes exactly this from its
    x_start (``LMDM.predict_noise_from_start``), so the result is the same up to rounding, the
    denoiser contract stays one array (stand-ins and batched wrappers are simpler), and ε̂ is
    always consistent with the x₀ actually used.
    """
    x = np.asarray(x_T, np.float32)
    cond = np.asarray(cond, np.float32)
    cond_frame = np.asarray(cond_frame, np.float32)
    zs = np.asarray(zs, np.float32)
    if x.ndim != 3 or x.shape[1:] != (SEQ_FRAMES, MOTION_DIM):
        raise ValueError(f"x_T has shape {x.shape}, expected (B, {SEQ_FRAMES}, {MOTION_DIM})")
    batch = x.shape[0]
    if cond.ndim != 3 or cond.shape[:2] != (batch, SEQ_FRAMES):
        raise ValueError(f"cond has shape {cond.shape}, expected ({batch}, {SEQ_FRAMES}, C)")
    if cond_frame.shape != (batch, MOTION_DIM):
        raise ValueError(f"cond_frame has shape {cond_frame.shape}, expected ({batch}, {MOTION_DIM})")
    noise_shape = (plan.n_noise, SEQ_FRAMES, MOTION_DIM)
    if zs.shape == noise_shape:
        per_stream = False
    elif zs.shape == (batch,) + noise_shape:
        per_stream = True
    else:
        raise ValueError(f"zs has shape {zs.shape}, expected {noise_shape} or {(batch,) + noise_shape}")

    for i, (t, t_next) in enumerate(plan.time_pairs):
        time_cond = np.full((batch,), t, np.int64)
        x0 = np.asarray(denoise(x, cond_frame, cond, time_cond), np.float32)
        if x0.shape != x.shape:
            raise ValueError(f"denoise returned shape {x0.shape}, expected {x.shape}")
        if t_next < 0:
            return x0
        eps = plan.recip1m[i] * x - x0 / plan.recipm1[i]
        z = zs[:, i] if per_stream else zs[i]
        x = x0 * plan.sqrt_alpha_next[i] + plan.c[i] * eps + plan.sigma[i] * z
    return x  # not reached: the last pair always has t_next = -1


# ------------------------------------------------------------------------------------------
# conditioning


def emotion_vector(emo: int | str | Sequence[int | str] | np.ndarray) -> np.ndarray:
    """The (8,) float32 emotion condition (§4.2, ``_get_emo_avg``).

    A label (index or name: Angry, Disgust, Fear, Happy, Neutral, Sad, Surprise, Contempt) or a
    list of them gives the softmax of logits that are 8 on those labels and 0 elsewhere. An (8,)
    array is taken as the weights themselves (Ditto's real emotion arrays are used as given).
    """
    if isinstance(emo, np.ndarray):
        arr = np.asarray(emo, np.float32)
        if arr.shape != (EMO_DIM,) or not np.all(np.isfinite(arr)):
            raise ValueError(f"emotion weights must be {EMO_DIM} finite values, got shape {arr.shape}")
        return arr.copy()
    labels = [emo] if isinstance(emo, (int, str, np.integer)) else list(emo)
    if not labels or len(labels) > EMO_DIM:
        raise ValueError(f"expected 1 to {EMO_DIM} emotion labels, got {len(labels)}")
    logits = np.zeros(EMO_DIM, np.float32)
    for label in labels:
        logits[_emotion_index(label)] = EMO_LOGIT
    e = np.exp(logits - logits.max())  # float32, as scipy.special.softmax of Ditto's float32 logits
    return (e / e.sum()).astype(np.float32)


def _emotion_index(label: int | str | np.integer) -> int:
    if isinstance(label, str):
        names = [n.lower() for n in EMOTIONS]
        if label.lower() not in names:
            raise ValueError(f"unknown emotion {label!r}; expected one of {', '.join(EMOTIONS)}")
        return names.index(label.lower())
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
        raise ValueError(f"emotion label must be an index or a name, got {label!r}")
    if not 0 <= int(label) < EMO_DIM:
        raise ValueError(f"emotion index {label} out of range 0..{EMO_DIM - 1}")
    return int(label)


@dataclass(frozen=True)
class CondFlags:
    """Which optional parts the LMDM condition has (``audio2motion_cfg``'s ``use_*``, §4.2)."""

    use_emo: bool = True
    use_eye_open: bool = True
    use_eye_ball: bool = True
    use_sc: bool = True

    @property
    def dim(self) -> int:
        """C: 1024 + 8 + 2 + 6 + 63 = 1103 with every part."""
        return (
            FEATURE_DIM
            + EMO_DIM * self.use_emo
            + EYE_OPEN_DIM * self.use_eye_open
            + EYE_BALL_DIM * self.use_eye_ball
            + SC_DIM * self.use_sc
        )

    @classmethod
    def from_cfg(cls, audio2motion_cfg: Mapping[str, object]) -> "CondFlags":
        """From the cfg pickle's ``audio2motion_cfg`` (Ditto reads all four keys; none may miss)."""
        keys = ("use_emo", "use_eye_open", "use_eye_ball", "use_sc")
        missing = [k for k in keys if k not in audio2motion_cfg]
        if missing:
            raise ValueError(f"audio2motion_cfg lacks {', '.join(missing)}")
        return cls(**{k: bool(audio2motion_cfg[k]) for k in keys})


def _rows(name: str, value: np.ndarray | None, width: int, n: int) -> np.ndarray:
    if value is None:
        raise ValueError(f"the condition needs {name} ({width} values) but none was given")
    arr = np.asarray(value, np.float32)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != width or arr.shape[0] not in (1, n):
        raise ValueError(f"{name} has shape {np.shape(value)}, expected ({width},), (1, {width}) or ({n}, {width})")
    return np.broadcast_to(arr, (n, width))


def build_cond(
    features: np.ndarray,
    emo: np.ndarray | None,
    eye_open: np.ndarray | None,
    eye_ball: np.ndarray | None,
    sc: np.ndarray | None,
    flags: CondFlags = CondFlags(),
) -> np.ndarray:
    """Condition rows ``[hubert 1024 | emo 8 | eye_open 2 | eye_ball 6 | sc 63]`` (§4.2).

    ``features`` is (n, 1024); each other part is one row for every frame or (n, width), and is
    used only when its flag is set. Returns (n, flags.dim) float32.
    """
    feats = np.asarray(features, np.float32)
    if feats.ndim != 2 or feats.shape[1] != FEATURE_DIM:
        raise ValueError(f"features have shape {feats.shape}, expected (n, {FEATURE_DIM})")
    n = feats.shape[0]
    parts = [feats]
    if flags.use_emo:
        parts.append(_rows("emo", emo, EMO_DIM, n))
    if flags.use_eye_open:
        parts.append(_rows("eye_open", eye_open, EYE_OPEN_DIM, n))
    if flags.use_eye_ball:
        parts.append(_rows("eye_ball", eye_ball, EYE_BALL_DIM, n))
    if flags.use_sc:
        parts.append(_rows("sc", sc, SC_DIM, n))
    return np.concatenate(parts, axis=1)


# ------------------------------------------------------------------------------------------
# lookahead


def check_overlap(overlap: int) -> int:
    """V = 80 - O for an allowed O (70 or 75); ValueError otherwise (§4.4)."""
    if overlap not in ALLOWED_OVERLAPS:
        raise ValueError(f"overlap_v2 must be one of {ALLOWED_OVERLAPS}, got {overlap}")
    return SEQ_FRAMES - overlap


def lookahead_samples(k: int, valid_len: int) -> int:
    """The stream audio (samples from 0) that must exist before frame ``k`` can be emitted:
    (k - k mod V + 2V + 2)·640 + 80 (§4.4).

    Block b = k // V (frames bV .. bV+V-1) is emitted by window b+1, the one after the window
    that first covers it. Window b+1's last frame is (b+2)V - 1, whose feature comes from HuBERT
    window (b+2)V/5 - 1, which ends at stream sample 3200((b+2)V/5 - 1) + 4560.
    """
    return (k - k % valid_len + 2 * valid_len + 2) * FRAME_SAMPLES + 80


def lookahead_s(overlap: int) -> float:
    """The backend's ``lookahead_s``: the largest audio a frame needs past its own time,
    (2V + 2)·0.04 + 0.005 s (the first frame of a block): 0.485 at O = 75, 0.885 at O = 70."""
    v = check_overlap(overlap)
    return lookahead_samples(0, v) / SAMPLE_RATE


LOOKAHEAD_S = lookahead_s  # the name the spec's §10 uses


# ------------------------------------------------------------------------------------------
# the online state machine


@dataclass(frozen=True)
class MotionWindow:
    """One LMDM window due for a stream: sample it and hand x₀ to :meth:`OnlineMotion.accept`."""

    cond: np.ndarray  # (80, C)
    cond_frame: np.ndarray  # (265,): kp_cond
    x_T: np.ndarray  # (80, 265), drawn for this window
    zs: np.ndarray  # (S-1, 80, 265), the stream's fixed z's
    first_frame: int  # video frame of cond row 0 (negative: warm-up silence)
    final: bool  # padded with the last feature at the end of the stream


class OnlineMotion:
    """One stream's online LMDM windowing (§4.4), with its own seeded RNG.

    Frames are numbered as video frames: feature k (pushed k-th) drives frame k. ``silence`` is
    the O warm-up features placed before frame 0 (frames -O..-1). Window j covers frames
    jV - O .. jV - O + 79. The first window emits nothing and sets :attr:`d0`; each later window is
    fused into ``res`` and emits the next V frames, clipped to ``v_min_max``.

    Use: :meth:`push_features` as HuBERT windows come; while :meth:`pending` returns a window,
    sample it (batched with other streams) and :meth:`accept` the result; read frames with
    :meth:`motion` / :meth:`take`. At the end of the stream call :meth:`finish` and drain
    :meth:`pending` the same way.
    """

    def __init__(
        self,
        silence: np.ndarray,
        source: np.ndarray,
        *,
        overlap: int = 75,
        flags: CondFlags = CondFlags(),
        emo: np.ndarray | int | str | Sequence[int | str] | None = NEUTRAL,
        eye_open: np.ndarray | None = None,
        eye_ball: np.ndarray | None = None,
        sc: np.ndarray | None = None,
        fix_kp_cond: int = 0,
        fix_kp_cond_dim: tuple[int, int] | None = (0, POSE_DIMS),
        smo_k_d: int = 3,
        v_min_max: np.ndarray | None = None,
        plan: SamplerPlan | None = None,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        self.overlap = overlap
        self.valid_len = check_overlap(overlap)  # V
        self.fuse_len = min(overlap, self.valid_len)  # F (online mode)
        self._alpha = (np.arange(self.fuse_len, dtype=np.float32) / self.fuse_len)[:, None]
        silence = np.asarray(silence, np.float32)
        if silence.shape != (overlap, FEATURE_DIM):
            raise ValueError(f"silence features have shape {silence.shape}, expected ({overlap}, {FEATURE_DIM})")
        source = np.asarray(source, np.float32).reshape(-1)
        if source.shape != (MOTION_DIM,):
            raise ValueError(f"source motion has {source.size} values, expected {MOTION_DIM}")
        if fix_kp_cond < 0:
            raise ValueError(f"fix_kp_cond must be >= 0, got {fix_kp_cond}")
        self.flags = flags
        self._static = {  # validated once: one row each, for every frame
            "eye_open": _rows("eye_open", eye_open, EYE_OPEN_DIM, 1).copy() if flags.use_eye_open else None,
            "eye_ball": _rows("eye_ball", eye_ball, EYE_BALL_DIM, 1).copy() if flags.use_eye_ball else None,
            "sc": _rows("sc", sc, SC_DIM, 1).copy() if flags.use_sc else None,
        }
        self._source = source.copy()
        self._fix_kp_cond = fix_kp_cond
        self._fix_dim = None if fix_kp_cond_dim is None else (int(fix_kp_cond_dim[0]), int(fix_kp_cond_dim[1]))
        self._smo_k = smo_k_d
        if v_min_max is not None:
            v_min_max = np.asarray(v_min_max, np.float32)
            if v_min_max.ndim != 2 or v_min_max.shape[0] < 2 or v_min_max.shape[1] != MOTION_DIM:
                raise ValueError(f"v_min_max has shape {v_min_max.shape}, expected (>=2, {MOTION_DIM})")
            v_min_max = v_min_max[:2].copy()
        self._v_min_max = v_min_max
        self.plan = plan if plan is not None else sampler_plan(10)
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.zs = draw_step_noise(self.rng, self.plan)  # once per stream (Ditto's setup)
        self.zs.setflags(write=False)  # every window hands it out

        # emotion: segments (from_frame, table (M, 8)); frame i uses table[max(i,0) % M] of the
        # last segment starting at or before max(i, 0) (condition_handler.py's indexing)
        self._emo_segments: list[tuple[int, np.ndarray]] = []
        if flags.use_emo:
            self._emo_segments.append((0, self._emo_table(NEUTRAL if emo is None else emo)))

        self._feats = silence.copy()  # frames _buf_start .. _buf_start + len - 1
        self._emo = self._emo_rows(range(-overlap, 0)) if flags.use_emo else None
        self._buf_start = -overlap
        self._n_real = 0  # features pushed: frames 0 .. _n_real - 1 are real
        self._next_start = -overlap  # first frame of the next window
        self._res: np.ndarray | None = None  # fused motion, frames _res_start ..
        self._res_start = -overlap
        self._next_emit = 0  # the next frame to emit
        self._kp_cond = source.copy()
        self._clip_idx = 0  # windows run (Ditto's clip_idx)
        self._d0: np.ndarray | None = None
        self._ended = False
        self._window: MotionWindow | None = None
        self._emitted: dict[int, np.ndarray] = {}

    # -- input ------------------------------------------------------------------------------

    def push_features(self, feats: np.ndarray, emo: np.ndarray | None = None) -> None:
        """Append HuBERT features (n, 1024) for the next n frames.

        ``emo`` gives their emotion rows ((8,) or (n, 8)); without it they take the stream's
        current emotion (:meth:`set_emotion`).
        """
        if self._ended:
            raise RuntimeError("features pushed after finish()")
        feats = np.asarray(feats, np.float32)
        if feats.ndim != 2 or feats.shape[1] != FEATURE_DIM:
            raise ValueError(f"features have shape {feats.shape}, expected (n, {FEATURE_DIM})")
        n = feats.shape[0]
        if n == 0:
            return
        frames = range(self._n_real, self._n_real + n)
        if self.flags.use_emo:
            rows = self._emo_rows(frames) if emo is None else _rows("emo", emo, EMO_DIM, n).copy()
            if self._n_real == 0:  # the warm-up frames take frame 0's emotion (index max(i, 0))
                self._emo[:] = rows[0]
            self._emo = np.concatenate([self._emo, rows])
        self._feats = np.concatenate([self._feats, feats])
        self._n_real += n

    def set_emotion(self, emo: np.ndarray | int | str | Sequence[int | str], from_frame: int) -> None:
        """Use ``emo`` (labels, (8,) weights or an (M, 8) table cycled by frame) from video frame
        ``from_frame`` on, for frames already pushed and still buffered as well as later ones.
        A window already handed out by :meth:`pending` keeps its condition; the fusing between
        windows then blends the change in.
        """
        if not self.flags.use_emo:
            raise ValueError("this LMDM's condition has no emotion (use_emo is off)")
        from_frame = max(int(from_frame), 0)
        table = self._emo_table(emo)
        self._emo_segments = [s for s in self._emo_segments if s[0] < from_frame] + [(from_frame, table)]
        lo = max(from_frame, self._buf_start)
        hi = self._buf_start + len(self._emo)
        if hi > lo:
            self._emo[lo - self._buf_start :] = self._emo_rows(range(lo, hi))
        if from_frame == 0 and self._buf_start < 0:  # warm-up rows follow frame 0
            self._emo[: -self._buf_start] = self._emo_rows([0])[0]

    def finish(self) -> None:
        """End of stream: the remaining windows are padded with the last feature, and only real
        frames (those with a pushed feature) are emitted (§4.4 item 7)."""
        self._ended = True

    # -- windows ----------------------------------------------------------------------------

    def pending(self) -> MotionWindow | None:
        """The next window due, or None. The same window is returned until it is accepted."""
        if self._window is None:
            final = self._due()
            if final is None:
                return None
            self._window = self._make_window(self._next_start, final, draw_x_T(self.rng))
        return self._window

    def _due(self) -> bool | None:
        # None: no window due; else whether the next one is the padded end-of-stream window
        have = len(self._feats) - (self._next_start - self._buf_start)  # frames from its start
        if have >= SEQ_FRAMES:
            return False
        if self._ended and self._next_emit < self._n_real and have > 0:
            return True
        return None

    def _make_window(self, start: int, final: bool, x_T: np.ndarray) -> MotionWindow:
        lo = start - self._buf_start
        feats = self._feats[lo : lo + SEQ_FRAMES]
        n = len(feats)
        if n < SEQ_FRAMES:  # end of stream: repeat the last feature
            feats = np.concatenate([feats, np.repeat(feats[-1:], SEQ_FRAMES - n, axis=0)])
        emo = None
        if self.flags.use_emo:
            emo = self._emo[lo : lo + n]
            if n < SEQ_FRAMES:  # padded frames take their own frames' emotion, as Ditto's handler
                emo = np.concatenate([emo, self._emo_rows(range(start + n, start + SEQ_FRAMES))])
        static = self._static
        cond = build_cond(feats, emo, static["eye_open"], static["eye_ball"], static["sc"], self.flags)
        return MotionWindow(cond, self._kp_cond.copy(), x_T, self.zs, start, final)

    def accept(self, pred: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Take the sampled x₀ (80, 265) of the pending window; returns the (frame, vector)
        pairs it emits, in frame order (also kept for :meth:`motion` / :meth:`take`)."""
        win = self._window
        if win is None:
            raise RuntimeError("accept() without a pending window")
        pred = np.asarray(pred, np.float32)
        if pred.shape == (1, SEQ_FRAMES, MOTION_DIM):
            pred = pred[0]
        if pred.shape != (SEQ_FRAMES, MOTION_DIM):
            raise ValueError(f"pred has shape {pred.shape}, expected ({SEQ_FRAMES}, {MOTION_DIM})")
        v, f = self.valid_len, self.fuse_len
        out: list[tuple[int, np.ndarray]] = []
        if self._res is None:
            # first window: smooth all of it; its first frame (silence) anchors relative motion
            self._res = self._smooth(pred.copy(), 0, SEQ_FRAMES)
            self._res_start = win.first_frame
            self._next_emit = win.first_frame + SEQ_FRAMES - f
            self._d0 = self._clip(self._res[0])
        else:
            res = self._res
            # crossfade the held-back tail with the new window's overlap, then append its new part
            r2 = pred[SEQ_FRAMES - v - f : SEQ_FRAMES - v]
            res[-f:] = res[-f:] * (1 - self._alpha) + r2 * self._alpha
            res = np.concatenate([res, pred[SEQ_FRAMES - v :]])
            n = len(res)
            self._res = res = self._smooth(res, n - v - f, n - v + 1)
            if win.final:  # what is left of the real frames; never frames made of padding
                stop = min(self._next_emit + v + f, self._n_real)
            else:
                stop = self._next_emit + v
            for k in range(self._next_emit, stop):
                vec = self._clip(res[k - self._res_start])
                self._emitted[k] = vec
                out.append((k, vec))
            self._next_emit = stop
        self._clip_idx += 1
        self._update_kp_cond()
        if len(self._res) > MAX_KEEP:
            cut = len(self._res) - MAX_KEEP
            self._res = self._res[cut:]
            self._res_start += cut
        self._next_start += v
        self._trim_features()
        self._window = None
        return out

    def _smooth(self, res: np.ndarray, s: int, e: int) -> np.ndarray:
        # centred mean of width smo_k_d on the pose dims, of the unsmoothed values, edges clipped
        if self._smo_k <= 1:
            return res
        orig = res.copy()
        n, half = len(res), self._smo_k // 2
        for i in range(s, e):
            res[i, :POSE_DIMS] = np.mean(orig[max(0, i - half) : min(n, i + half + 1), :POSE_DIMS], axis=0)
        return res

    def _update_kp_cond(self) -> None:
        # the frame just before the next window's first frame (res index len - O - 1)
        prev = self._res[len(self._res) - self.overlap - 1].copy()
        if self._fix_kp_cond > 0 and self._clip_idx % self._fix_kp_cond == 0:
            kp = self._source.copy()  # reset to the source, keeping the carried dims
            if self._fix_dim is not None:
                ds, de = self._fix_dim
                kp[ds:de] = prev[ds:de]
            self._kp_cond = kp
        else:
            self._kp_cond = prev

    def _trim_features(self) -> None:
        # nothing before the next window's first frame is read again (Ditto keeps the last 160
        # features; keeping fewer changes nothing)
        cut = self._next_start - self._buf_start
        if self._n_real == 0:
            cut = 0  # warm-up emotion rows still wait for frame 0's
        if cut > 0:
            self._feats = self._feats[cut:]
            if self._emo is not None:
                self._emo = self._emo[cut:]
            self._buf_start += cut
        if self._emo_segments:
            keep = max(0, self._buf_start)  # drop emotion segments no buffered frame uses
            while len(self._emo_segments) > 1 and self._emo_segments[1][0] <= keep:
                self._emo_segments.pop(0)

    def _clip(self, vec: np.ndarray) -> np.ndarray:
        if self._v_min_max is None:
            return vec.copy()
        return np.clip(vec, self._v_min_max[0], self._v_min_max[1])

    def _emo_table(self, emo: np.ndarray | int | str | Sequence[int | str]) -> np.ndarray:
        if isinstance(emo, np.ndarray) and emo.ndim == 2:
            table = np.asarray(emo, np.float32)
            if table.shape[1] != EMO_DIM or len(table) == 0 or not np.all(np.isfinite(table)):
                raise ValueError(f"emotion table has shape {emo.shape}, expected (M, {EMO_DIM})")
            return table.copy()
        return emotion_vector(emo)[None]

    def _emo_rows(self, frames: Iterable[int]) -> np.ndarray:
        out = []
        for i in frames:
            j = max(i, 0)
            table = next(t for s, t in reversed(self._emo_segments) if s <= j)
            out.append(table[j % len(table)])
        return np.array(out, np.float32).reshape(-1, EMO_DIM)

    # -- output -----------------------------------------------------------------------------

    @property
    def d0(self) -> np.ndarray | None:
        """The relative-motion anchor (265,): the first window's first frame, clipped; None
        before the first window. MotionStitch subtracts it (§5.2)."""
        return None if self._d0 is None else self._d0.copy()

    def motion(self, k: int) -> np.ndarray | None:
        """The emitted motion vector of video frame ``k``, or None (not emitted yet, or released)."""
        return self._emitted.get(k)

    def take(self, k: int) -> np.ndarray | None:
        """Frame ``k``'s vector, releasing it and every frame before it (frames are consumed in
        order; a skipped slot's vector is dropped with it)."""
        vec = self._emitted.get(k)
        self.release_before(k + 1)
        return vec

    def release_before(self, k: int) -> None:
        """Forget the emitted vectors of frames before ``k``."""
        for old in [i for i in self._emitted if i < k]:
            del self._emitted[old]

    @property
    def emitted_until(self) -> int:
        """One past the last frame emitted so far."""
        return self._next_emit

    @property
    def features_pushed(self) -> int:
        return self._n_real

    @property
    def windows_run(self) -> int:
        return self._clip_idx

    @property
    def done(self) -> bool:
        """finish() was called and every real frame has been emitted."""
        return self._ended and self._window is None and self._due() is None

    def buffered(self) -> dict[str, int]:
        """Sizes of the internal buffers (stats; the memory bound)."""
        return {
            "features": len(self._feats),
            "res": 0 if self._res is None else len(self._res),
            "emitted": len(self._emitted),
        }
