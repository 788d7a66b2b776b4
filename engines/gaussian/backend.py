"""``gaussian``: a person's own 3D Gaussian head, enrolled from a video of them
(``python -m stream_server enrol``), driven by the voice.

The audio-to-mouth model (the one ``mesh`` uses) turns each frame's audio into the mouth's
``open``, ``width`` and ``closure``; those, and the blinks of the replay plate's frame, drive the
person's rig and offset network (``model.py``); the Gaussians are rasterised at the plate frame's
head pose and composited over the plate (the enrolment video's own frames, played forward and
back), which gives the background, the torso and the head's motion.

On an NVIDIA GPU it renders with gsplat when that is installed and builds, else with the
project's own torch rasteriser on the GPU; the jobs due in one tick, of every session and every
enrolled person rendered at the same size, go through one batched rasterization. A CPU cannot
render it in real time: the backend is unavailable there unless ``LIPSYNC_GAUSSIAN_CPU=1`` asks
for the debug mode (the torch rasteriser at most 128x128).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from engines.audio2mouth.model import AudioToMouth
from engines.base import Avatar, AvatarError, Backend, BackendEnrol, FrameJob
from engines.gaussian.prepare import EnrolError
from engines.images import fit_cover
from engines.machine import gpus
from engines.mouth import MouthParams

log = logging.getLogger(__name__)

CPU_ENV = "LIPSYNC_GAUSSIAN_CPU"
DEBUG_SIDE = 128  # the largest render the CPU debug mode draws
_MODEL = AudioToMouth.load()


def _cpu_debug() -> bool:
    return os.environ.get(CPU_ENV, "") == "1"


@dataclass
class _Head:
    """One enrolled head, loaded for serving."""

    model: Any  # GaussianHead (torch)
    plate: Any  # checkpoint.Plate
    side: int  # render side, px
    frames: dict[int, np.ndarray]  # decoded plate frames (a small cache)
    drive_low: np.ndarray  # (5,) the enrolment video's p1 of each drive value
    drive_high: np.ndarray  # (5,) and its p99


def pingpong(i: int, n: int) -> int:
    """Plate frame ``i`` of a loop played forward then backward (no jump at the ends)."""
    if n <= 1:
        return 0
    period = 2 * (n - 1)
    i %= period
    return i if i < n else period - i


def same_raster(jobs: Sequence[FrameJob]) -> dict[tuple[Any, ...], list[int]]:
    """Job indices grouped by what one rasterization must share: render side, crop resolution
    (the camera) and the projection's constants. Heads of different people mix in a group."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, job in enumerate(jobs):
        head: _Head = job.avatar.data["head"]
        config = head.model.config
        groups.setdefault((head.side, config.res, config.z0, config.eps2d), []).append(i)
    return groups


def pad_and_join(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Several heads' Gaussians ([B_i, N_i, ...] each) as one batch [sum B_i, max N_i, ...]; the
    padding Gaussians have zero opacity, so they draw nothing (the rasterizers' batch test)."""
    import torch

    n = max(p["means"].shape[1] for p in parts)
    out = {}
    for key in ("means", "quats", "scales", "opacities", "colors"):
        rows = []
        for p in parts:
            x = p[key]
            pad = n - x.shape[1]
            if pad:
                fill = torch.zeros((x.shape[0], pad, *x.shape[2:]), dtype=x.dtype, device=x.device)
                if key == "quats":
                    fill[..., 0] = 1.0  # a valid rotation
                elif key == "scales":
                    fill += 1e-3
                x = torch.cat((x, fill), 1)
            rows.append(x)
        out[key] = torch.cat(rows, 0)
    return out


class GaussianBackend(Backend):
    name = "gaussian"
    description = ("A person's own 3D Gaussian head, enrolled from a video of them (python -m stream_server "
                   "enrol), driven by the voice; needs an NVIDIA GPU for real time")
    lookahead_s = _MODEL.lookahead_s
    context_s = _MODEL.context_s
    batch_size = 8
    quality_rank = None  # never picked by auto: it needs an enrolled head, which auto cannot choose
    enrol = BackendEnrol(
        entry="engines.gaussian.enrol:enrol",
        help="a Gaussian head of the person in the video (tracking, rig, training; minutes on a GPU)",
        errors=(EnrolError, AvatarError),
        needs=("torch", "safetensors"),
    )

    @classmethod
    def unavailable_reason(cls) -> str | None:
        missing = [m for m in ("torch", "safetensors") if importlib.util.find_spec(m) is None]
        if missing:
            return f"needs {' and '.join(missing)} (pip install '.[test]')"
        if not gpus()[0] and not _cpu_debug():
            return (f"needs an NVIDIA GPU for real time; {CPU_ENV}=1 renders at {DEBUG_SIDE}x{DEBUG_SIDE} "
                    f"on the CPU (a debug mode, not real time)")
        return None

    def __init__(self) -> None:
        self._model = _MODEL
        self._device = "cpu"
        self._rasterize: Any = None
        self._renderer = ""

    def load(self) -> None:
        import torch

        from engines.gaussian.raster_gsplat import gsplat_unavailable

        self._device = "cuda" if torch.cuda.is_available() else "cpu"
        why_not = gsplat_unavailable() if self._device == "cuda" else "no CUDA"
        if why_not is None:
            from engines.gaussian.raster_gsplat import rasterize
            self._renderer = "gsplat"
        else:
            from engines.gaussian.raster_torch import rasterize
            self._renderer = f"torch ({why_not})"
        self._rasterize = rasterize
        log.info("gaussian: rendering on %s with %s", self._device, self._renderer)

    def prepare_avatar(self, name: str, image: np.ndarray | None) -> Avatar:
        from engines.gaussian.checkpoint import head_dir, load_head

        if image is None:
            raise AvatarError("the gaussian backend animates an enrolled person, not the live camera: "
                              "enrol a video (python -m stream_server enrol --video CLIP --name NAME) and pick NAME")
        try:
            folder = head_dir(name)
        except (AvatarError, ValueError) as exc:
            raise AvatarError(f"no enrolled head named {name!r}: {exc}") from exc
        head_file, plate = load_head(folder)  # AvatarError with the hint to enrol or re-enrol
        model = head_file.model(self._device).eval()
        side = model.config.res if self._device == "cuda" else min(model.config.res, DEBUG_SIDE)
        # the drive stays inside what the video showed (p1..p99): the rig and the offsets were
        # fitted there, and extrapolate badly beyond
        low_high = np.asarray(head_file.config.get("drive_range", [[-np.inf, np.inf]] * 5), np.float32)
        return Avatar(name=name, image=image, data={"head": _Head(model, plate, side, {}, low_high[:, 0], low_high[:, 1])})

    def generate(self, jobs: Sequence[FrameJob]) -> list[np.ndarray]:
        import torch

        raw = self._model.predict_batch(np.stack([job.audio.mel for job in jobs]))
        plate_frame: list[int] = []
        drive = np.zeros((len(jobs), 5), np.float32)
        for i, job in enumerate(jobs):
            head: _Head = job.avatar.data["head"]
            k = pingpong(int(round(job.time_s * head.plate.fps)), len(head.plate))
            mouth = MouthParams.from_array(raw[i]).with_gain(job.expression.mouth_gain)
            d = [mouth.open, mouth.width, mouth.closure, *head.plate.blink[k]]
            drive[i] = np.clip(np.asarray(d, np.float32), head.drive_low, head.drive_high)
            plate_frame.append(k)
        frames: list[np.ndarray] = [job.base_frame] * len(jobs)
        with torch.no_grad():
            for indices in same_raster(jobs).values():
                rgb, alpha = self._render(jobs, indices, drive, plate_frame)
                for j, i in enumerate(indices):
                    frames[i] = self._composite(jobs[i].avatar.data["head"], plate_frame[i], rgb[j], alpha[j],
                                                jobs[i].base_frame.shape)
        return frames

    def _render(self, jobs: Sequence[FrameJob], indices: list[int], drive: np.ndarray,
                plate_frame: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """One rasterization for the jobs ``indices`` (heads of one render size): each head's
        Gaussians at its jobs' drive and plate poses, padded with transparent ones to one count."""
        import torch

        by_head: dict[int, list[int]] = {}
        for i in indices:
            by_head.setdefault(id(jobs[i].avatar.data["head"]), []).append(i)
        parts, order = [], []
        for group in by_head.values():
            head: _Head = jobs[group[0]].avatar.data["head"]
            d = torch.from_numpy(drive[group]).to(self._device)
            pose = torch.from_numpy(head.plate.pose[[plate_frame[i] for i in group]]).to(self._device)
            parts.append(head.model(d, pose))
            order += group
        first: _Head = jobs[indices[0]].avatar.data["head"]
        g = pad_and_join(parts) if len(parts) > 1 else parts[0]
        model = first.model
        rgb, alpha = self._rasterize(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"],
                                     model.cameras(len(order), first.side), first.side, first.side,
                                     z0=model.config.z0, eps2d=model.config.eps2d)
        rgb, alpha = rgb.float().cpu().numpy(), alpha.float().cpu().numpy()
        row = {i: r for r, i in enumerate(order)}  # rendered in ``order``; returned in ``indices``
        back = [row[i] for i in indices]
        return rgb[back], alpha[back]

    @staticmethod
    def _composite(head: _Head, k: int, rgb: np.ndarray, alpha: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """The head over plate frame k's crop, pasted back into the frame, fitted to the output."""
        from engines.gaussian.prepare import cut_crop

        plate = head.plate
        if k not in head.frames:
            if len(head.frames) > 64:
                head.frames.pop(next(iter(head.frames)))
            head.frames[k] = plate.frame(k)
        frame = head.frames[k].copy()
        box = np.round(np.asarray(plate.crop) * plate.scale).astype(int)
        under = cut_crop(frame, box, head.side).astype(np.float32) / 255.0
        crop = np.clip(rgb + (1.0 - alpha) * under, 0.0, 1.0)
        x0, y0, x1, y1 = box
        h, w = frame.shape[:2]
        patch = cv2.resize((crop * 255.0 + 0.5).astype(np.uint8), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
        fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        frame[fy0:fy1, fx0:fx1] = patch[fy0 - y0: fy1 - y0, fx0 - x0: fx1 - x0]
        return fit_cover(frame, shape[1], shape[0])

    def stream_stats(self, stream_id: str) -> dict[str, Any]:
        return {}
