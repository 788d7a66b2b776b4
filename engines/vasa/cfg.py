"""Ditto's online config pickle (``v0.4_hubert_cfg_trt_online.pkl``), read safely.

The pickle holds plain containers and numpy arrays (Hugging Face's scan lists only numpy's
``dtype``, ``ndarray`` and ``_reconstruct`` as imports); the unpickler admits exactly those and
refuses anything else by name, so a tampered file cannot run code. Only numbers and flags are
taken from it: ``audio2motion_cfg`` and ``default_kwargs`` (spec §1.2). Its ``model_path``
entries name TensorRT engines and are ignored; the files are found by ``files.py``.

Values the spec could not check against the real file (VERIFY) are logged at load.
"""

from __future__ import annotations

import builtins
import io
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.vasa.motion import MOTION_DIM, SEQ_FRAMES

log = logging.getLogger(__name__)

# module, name -> where to find it here: the file was written with numpy >= 2 (numpy._core),
# this project runs numpy 1.x (numpy.core)
_ALLOWED = {
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "_reconstruct"): np.core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): np.core.multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): np.core.multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): np.core.multiarray.scalar,
}
_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str", "bytes"}



class ConfigError(ValueError):
    """The config pickle is unreadable or not Ditto's; the message names the file."""


class _NumpyOnly(pickle.Unpickler):
    def __init__(self, data: bytes, path: Path) -> None:
        super().__init__(io.BytesIO(data))
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "builtins" and name in _BUILTINS:
            return getattr(builtins, name)
        raise ConfigError(f"{self.path}: not a Ditto cfg pickle (unexpected global {module}.{name}); "
                          f"it was not loaded")


def read_pickle(path: Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc})") from exc
    try:
        cfg = _NumpyOnly(data, path).load()
    except ConfigError:
        raise
    except Exception as exc:  # truncated or not a pickle at all
        raise ConfigError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(cfg, dict) or "audio2motion_cfg" not in cfg or "default_kwargs" not in cfg:
        keys = sorted(cfg) if isinstance(cfg, dict) else type(cfg).__name__
        raise ConfigError(f"{path}: not a Ditto cfg pickle (needs audio2motion_cfg and default_kwargs; has {keys})")
    return cfg


def condition_dim(use_emo: bool, use_eye_open: bool, use_eye_ball: bool, use_sc: bool, audio_dim: int = 1024) -> int:
    """The LMDM condition width: HuBERT 1024 | emotion 8 | eye open 2 | eye ball 6 | source kp 63."""
    return audio_dim + 8 * use_emo + 2 * use_eye_open + 6 * use_eye_ball + 63 * use_sc


@dataclass(frozen=True)
class DittoConfig:
    """What the backend takes from the pickle (spec §1.2, §4)."""

    path: Path
    seq_frames: int
    motion_dim: int
    cond_dim: int
    use_emo: bool
    use_eye_open: bool
    use_eye_ball: bool
    use_sc: bool
    overlap: int  # overlap_v2 as shipped (the server may choose another allowed one)
    sampling_steps: int
    fix_kp_cond: int
    fix_kp_cond_dim: tuple[int, int]
    smo_k_d: int
    emo: np.ndarray | None  # (M, 8) per-frame emotion weights, or None
    v_min_max: np.ndarray | None  # (>=2, 265): rows 0 and 1 clip each emitted vector
    delta_eye: np.ndarray | None  # (15, 63) blink expression offsets
    delta_eye_open_n: int
    drive_eye: bool | None
    overall_ctrl: dict[str, float]
    ch_info: dict[str, Any] | None  # the reference character the LMDM is conditioned on
    crop_scale: float
    crop_vy_ratio: float
    crop_do_rot: bool

    @property
    def summary(self) -> str:
        return (f"C={self.cond_dim} (emo {self.use_emo}, eye_open {self.use_eye_open}, eye_ball {self.use_eye_ball}, "
                f"sc {self.use_sc}), overlap_v2={self.overlap}, steps={self.sampling_steps}, "
                f"fix_kp_cond={self.fix_kp_cond} {list(self.fix_kp_cond_dim)}, smo_k_d={self.smo_k_d}, "
                f"ch_info={'present' if self.ch_info else 'absent'}, overall_ctrl={self.overall_ctrl}")


def _array(value: Any, name: str, path: Path, shape_last: int | None = None) -> np.ndarray | None:
    if value is None:
        return None
    array = np.asarray(value, np.float32)
    if shape_last is not None and (array.ndim != 2 or array.shape[1] != shape_last):
        raise ConfigError(f"{path}: default_kwargs[{name!r}] has shape {array.shape}, expected (N, {shape_last})")
    return array


def load_config(path: Path) -> DittoConfig:
    cfg = read_pickle(path)
    a2m, kw = cfg["audio2motion_cfg"], cfg["default_kwargs"]
    if not isinstance(a2m, dict) or not isinstance(kw, dict):
        raise ConfigError(f"{path}: audio2motion_cfg and default_kwargs must be dicts")
    flags = {k: bool(a2m.get(k, False)) for k in ("use_emo", "use_eye_open", "use_eye_ball", "use_sc")}
    cond_dim = condition_dim(**flags)
    declared = a2m.get("audio_feat_dim")
    if declared is not None and int(declared) != cond_dim:
        raise ConfigError(f"{path}: audio_feat_dim is {declared} but the use_* flags {flags} make {cond_dim}")
    motion_dim = int(a2m.get("motion_feat_dim", MOTION_DIM))
    seq_frames = int(a2m.get("seq_frames", SEQ_FRAMES))
    if (motion_dim, seq_frames) != (MOTION_DIM, SEQ_FRAMES):
        raise ConfigError(f"{path}: motion_feat_dim {motion_dim} / seq_frames {seq_frames}; this backend "
                          f"implements Ditto v0.4 ({MOTION_DIM} / {SEQ_FRAMES})")
    emo = kw.get("emo", 4)
    emo_array = None if isinstance(emo, (int, np.integer)) else _array(emo, "emo", path, 8)
    fix_dim = kw.get("fix_kp_cond_dim") or (0, 202)
    ctrl = kw.get("overall_ctrl_info") or {}
    config = DittoConfig(
        path=Path(path), seq_frames=seq_frames, motion_dim=motion_dim, cond_dim=cond_dim, **flags,
        overlap=int(kw.get("overlap_v2", 10)), sampling_steps=int(kw.get("sampling_timesteps", 50)),
        fix_kp_cond=int(kw.get("fix_kp_cond", 0)), fix_kp_cond_dim=(int(fix_dim[0]), int(fix_dim[1])),
        smo_k_d=int(kw.get("smo_k_d", 3)), emo=emo_array,
        v_min_max=_array(kw.get("v_min_max_for_clip"), "v_min_max_for_clip", path, MOTION_DIM),
        delta_eye=_array(kw.get("delta_eye_arr"), "delta_eye_arr", path, 63),
        delta_eye_open_n=int(kw.get("delta_eye_open_n", 0) or 0), drive_eye=kw.get("drive_eye"),
        overall_ctrl={str(k): float(v) for k, v in dict(ctrl).items()},
        ch_info=kw.get("ch_info") or None,
        crop_scale=float(kw.get("crop_scale", 2.3)), crop_vy_ratio=float(kw.get("crop_vy_ratio", -0.125)),
        crop_do_rot=bool(kw.get("crop_flag_do_rot", True)),
    )
    log.info("%s: %s", Path(path).name, config.summary)  # VERIFY items of the spec, as found
    return config
