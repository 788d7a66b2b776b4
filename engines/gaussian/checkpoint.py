"""Enrolled heads on disk (spec ``gaussian.md`` §3.8): ``<root>/<name>.gshead/`` holds

* ``head.safetensors``: the named tensors (``mesh.*`` the rig and topology, ``gauss.*`` the
  Gaussians, ``mlp.{i}.*`` the offset MLP), float32 unless an index (int32) or the part label
  (int8); metadata ``format=lipsync-gaussian-head``, ``version=1``, ``config`` (a JSON string);
* ``plate.npz``: the replay plate (§3.6): JPEG frames (concatenated bytes + offsets, no pickle),
  per-frame poses [P, 8] = [s, qw, qx, qy, qz, tx, ty, tz], blinks [P, 2], drive vectors [P, 5],
  the crop box, fps, the source size (H, W) and the plate's scale;
* ``thumb.jpg`` (the head, 160²) and ``meta.json`` (name, created, video, length, metrics);
* ``poster.jpg``: the first plate frame at its full size (not in §3.8: the server's avatar list
  uses it as the picture other backends animate and to size a session, ``stream_server.avatars``).

The checkpoint is the export: serving reads these files as they are. ``load_head`` needs numpy
and safetensors only (``GaussianHead.from_tensors`` then builds the torch module).

The avatars root is ``$LIPSYNC_AVATARS_DIR`` when set, else ``./avatars`` (relative to the
working directory, as ``./models`` is for ``$LIPSYNC_MODELS_DIR``; ``engines.base.avatars_dir``):
see :func:`avatars_root`. A head is written in ``<root>/.partial/`` first and moved into place
once complete, so a crash never leaves a half-written ``<name>.gshead`` that lists.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engines.base import AvatarError, avatars_dir

FORMAT, VERSION = "lipsync-gaussian-head", 1
SUFFIX = ".gshead"
HEAD_FILE, PLATE_FILE, THUMB_FILE, META_FILE = "head.safetensors", "plate.npz", "thumb.jpg", "meta.json"
POSTER_FILE = "poster.jpg"
STAGING = ".partial"  # under the root: one level deeper than the */thumb.jpg the server scans
THUMB_SIDE = 160  # as stream_server.avatars.THUMBNAIL_SIDE
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
ENROL_HINT = "python -m engines.gaussian.enrol VIDEO --name NAME"
# the config keys serving relies on (the round-trip test checks them)
CONFIG_KEYS = ("res", "n_gaussians", "pe_freqs", "mlp", "outputs", "drive", "rig_features", "z0", "eps2d",
               "trained_iters", "train_psnr", "heldout_psnr", "source_sha256", "mediapipe", "drive_range")


def avatars_root(root: str | Path | None = None) -> Path:
    """``root`` if given, else ``$LIPSYNC_AVATARS_DIR``, else ``./avatars``."""
    return Path(root) if root is not None else avatars_dir()


def check_name(name: str) -> str:
    """A head name: letters, digits, '_' and '-', at most 64, starting with a letter or digit
    (it becomes a directory name and an avatar name in the API)."""
    if not NAME_RE.match(name or ""):
        raise AvatarError(f"invalid head name {name!r}: use letters, digits, '_' or '-' (at most 64, "
                          "starting with a letter or digit)")
    return name


def head_dir(name: str, root: str | Path | None = None) -> Path:
    return avatars_root(root) / f"{check_name(name)}{SUFFIX}"


# --------------------------------------------------------------------------- the plate

@dataclass
class Plate:
    """The replay plate (§3.6): frame k is shown with the head rendered at ``pose[k]``, ``blink[k]``."""

    jpeg: np.ndarray      # uint8, the JPEG frames concatenated
    offsets: np.ndarray   # (P+1,) int64
    pose: np.ndarray      # (P, 8) float32, canonical → crop pixels at res
    blink: np.ndarray     # (P, 2) float32
    drive: np.ndarray     # (P, 5) float32, the recorded drive vector (blinks are its last two)
    crop: np.ndarray      # (4,) int64 x0, y0, x1, y1 in source pixels
    fps: float
    size: np.ndarray      # (2,) int64 source H, W
    scale: float          # plate pixels per source pixel (long side ≤ 1280)
    res: int              # the head's world: crop pixels at res

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def frame(self, k: int) -> np.ndarray:
        """RGB uint8 plate frame k (plate size: source size × ``scale``)."""
        bgr = cv2.imdecode(self.jpeg[self.offsets[k]:self.offsets[k + 1]], cv2.IMREAD_COLOR)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"jpeg": self.jpeg, "offsets": self.offsets, "pose": self.pose, "blink": self.blink,
                "drive": self.drive, "crop": self.crop, "fps": np.asarray(self.fps, np.float64),
                "size": self.size, "scale": np.asarray(self.scale, np.float64), "res": np.asarray(self.res, np.int64)}

    @classmethod
    def from_prepared(cls, prepared: Any) -> "Plate":
        k = np.asarray(prepared.plate_frames)
        return cls(jpeg=np.asarray(prepared.plate_jpeg, np.uint8), offsets=np.asarray(prepared.plate_offsets, np.int64),
                   pose=np.asarray(prepared.pose[k], np.float32), blink=np.asarray(prepared.drive[k, 3:5], np.float32),
                   drive=np.asarray(prepared.drive[k], np.float32), crop=np.asarray(prepared.crop, np.int64),
                   fps=float(prepared.fps), size=np.asarray(prepared.source_size, np.int64),
                   scale=float(prepared.plate_scale), res=int(prepared.res))

    @classmethod
    def load(cls, path: Path) -> "Plate":
        with np.load(path, allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
        return cls(jpeg=a["jpeg"], offsets=a["offsets"], pose=a["pose"], blink=a["blink"], drive=a["drive"],
                   crop=a["crop"], fps=float(a["fps"]), size=a["size"], scale=float(a["scale"]), res=int(a["res"]))


def _thumbnail(plate: Plate) -> bytes:
    """The head's crop box of the first plate frame, THUMB_SIDE² JPEG (black beyond the frame)."""
    from engines.gaussian.prepare import cut_crop

    box = np.round(plate.crop * plate.scale).astype(np.int64)
    rgb = cut_crop(plate.frame(0), box, THUMB_SIDE)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return jpeg.tobytes()


# --------------------------------------------------------------------------- save / load

@dataclass
class HeadFile:
    """``head.safetensors`` read back: tensors (numpy), the config dict, and the meta.json dict."""

    tensors: dict[str, np.ndarray]
    config: dict[str, Any]
    meta: dict[str, Any]
    path: Path

    def model(self, device: str = "cpu") -> Any:
        """The :class:`GaussianHead` (torch) on ``device``."""
        from engines.gaussian.model import GaussianHead

        return GaussianHead.from_tensors(self.tensors, self.config).to(device)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.generic,)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


def head_config(head: Any, prepared: Any, metrics: dict[str, Any]) -> dict[str, Any]:
    """The §3.8 config JSON: the head's own config plus what serving needs from the enrolment."""
    from engines.gaussian import rig

    cfg = head.config.to_json()
    drive = np.asarray(prepared.drive, np.float64)
    cfg.update({
        "drive": list(rig.DRIVE), "rig_features": list(rig.FEATURES),
        # §6.7: serving clamps d to the training p1..p99 range
        "drive_range": np.percentile(drive, [1, 99], axis=0).T.tolist(),
        "blink_range": np.asarray(prepared.blink_range, np.float64).tolist(),
        "trained_iters": metrics.get("iterations"), "train_psnr": metrics.get("train_psnr"),
        "heldout_psnr": metrics.get("heldout_psnr"), "source_sha256": metrics.get("source_sha256"),
        "mediapipe": prepared.meta.get("mediapipe"), "renderer": metrics.get("renderer"),
        "n_gaussians": head.n_gaussians,
    })
    return _jsonable(cfg)


def save_head(directory: str | Path, head: Any, prepared: Any, metrics: dict[str, Any], *,
              name: str | None = None, overwrite: bool = True) -> Path:
    """Writes ``directory`` (``…/<name>.gshead``) in the §3.8 format, atomically: the files go to
    ``<parent>/.partial/`` and replace the old head (if ``overwrite``) only once complete."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise AvatarError(f"{directory} already exists (pass --force to replace it)")
    name = name or directory.name.removesuffix(SUFFIX)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / STAGING
    staging.mkdir(parents=True, exist_ok=True)
    tmp = staging / f"{directory.name}.{os.getpid()}"
    old = staging / f"{directory.name}.{os.getpid()}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        config = head_config(head, prepared, metrics)
        save_file(head.tensors(), str(tmp / HEAD_FILE),
                  metadata={"format": FORMAT, "version": str(VERSION), "config": json.dumps(config)})
        plate = Plate.from_prepared(prepared)
        buf = io.BytesIO()
        np.savez(buf, **plate.arrays())  # JPEG bytes: already compressed
        (tmp / PLATE_FILE).write_bytes(buf.getvalue())
        (tmp / THUMB_FILE).write_bytes(_thumbnail(plate))
        (tmp / POSTER_FILE).write_bytes(plate.jpeg[plate.offsets[0]:plate.offsets[1]].tobytes())
        summary = {k: v for k, v in metrics.items() if k not in ("config",)}
        meta = {
            "name": name, "format": FORMAT, "version": VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "video": prepared.meta.get("source"),
            "video_seconds": float(prepared.meta.get("source_frames", prepared.n_frames)) / float(prepared.fps),
            "frames": int(prepared.n_frames), "plate_frames": len(plate), "fps": float(prepared.fps),
            "res": int(prepared.res), "metrics": summary, "prepare": prepared.meta,
        }
        (tmp / META_FILE).write_text(json.dumps(_jsonable(meta), indent=1))
        for f in tmp.iterdir():  # safetensors creates its file owner-only; the rest is 0644 too
            f.chmod(0o644)
        if directory.exists():
            directory.replace(old)
            try:
                tmp.replace(directory)
            except OSError:
                old.replace(directory)  # the previous head back in place
                raise
        else:
            tmp.replace(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        try:
            staging.rmdir()  # only if empty (another enrolment may be writing there)
        except OSError:
            pass
    return directory


def _check_format(metadata: dict[str, str] | None, path: Path) -> dict[str, Any]:
    md = metadata or {}
    fmt, ver = md.get("format"), md.get("version")
    if fmt != FORMAT or ver != str(VERSION):
        raise AvatarError(f"{path} was enrolled by an incompatible version (format {fmt!r}, version {ver!r}; this "
                          f"server reads {FORMAT} version {VERSION}): re-enrol it with {ENROL_HINT}")
    try:
        return json.loads(md["config"])
    except (KeyError, ValueError) as e:
        raise AvatarError(f"{path} has no readable config ({e}): re-enrol it with {ENROL_HINT}") from e


def load_head(directory: str | Path) -> tuple[HeadFile, Plate]:
    """Reads a ``.gshead`` directory: (tensors + config, plate). Raises :class:`AvatarError` for
    a missing head or one of another format or version (with the hint to re-enrol)."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    directory = Path(directory)
    path = directory / HEAD_FILE
    if not path.is_file():
        raise AvatarError(f"no enrolled head at {directory}: enrol a video first: {ENROL_HINT}")
    with safe_open(str(path), framework="np") as f:
        config = _check_format(f.metadata(), path)
    tensors = load_file(str(path))
    meta_path = directory / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    plate_path = directory / PLATE_FILE
    if not plate_path.is_file():
        raise AvatarError(f"{directory} has no {PLATE_FILE}: re-enrol it with {ENROL_HINT}")
    return HeadFile(tensors, config, meta, directory), Plate.load(plate_path)


@dataclass(frozen=True)
class EnrolledHead:
    """One entry of :func:`enrolled_heads`."""

    name: str
    path: Path
    created: str
    heldout_psnr: float | None
    thumb: Path | None
    error: str | None = None  # why it cannot be served (an incompatible version), else None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "created": self.created,
                "heldout_psnr": self.heldout_psnr, "thumb": str(self.thumb) if self.thumb else None,
                "error": self.error}


def enrolled_heads(root: str | Path | None = None) -> list[EnrolledHead]:
    """The ``*.gshead`` directories under the avatars root (:func:`avatars_root`), by name. Only
    headers are read; an incompatible head is listed with its ``error``."""
    from safetensors import safe_open

    base = avatars_root(root)
    if not base.is_dir():
        return []
    found = []
    for d in sorted(base.glob(f"*{SUFFIX}")):
        head = d / HEAD_FILE
        if d.name.startswith(".") or not head.is_file():
            continue
        error = None
        try:
            with safe_open(str(head), framework="np") as f:
                _check_format(f.metadata(), head)
        except AvatarError as e:
            error = str(e)
        except Exception as e:  # a truncated or foreign file
            error = f"unreadable {head}: {e}"
        meta: dict[str, Any] = {}
        try:
            meta = json.loads((d / META_FILE).read_text())
        except (OSError, ValueError):
            pass
        thumb = d / THUMB_FILE
        found.append(EnrolledHead(
            name=d.name.removesuffix(SUFFIX), path=d,
            created=str(meta.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(head.stat().st_mtime))),
            heldout_psnr=(meta.get("metrics") or {}).get("heldout_psnr"),
            thumb=thumb if thumb.is_file() else None, error=error))
    return found
