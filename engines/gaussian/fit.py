"""Enrolment stage B: fit a :class:`GaussianHead` to a prepared clip (spec ``gaussian.md`` §3.7).

Per iteration: B training frames → rig mesh V(d) → triangle frames → Gaussians + MLP offsets →
frame pose → render → composite over the plate with a random colour inside the rendered region
(§3.6) → loss → Adam.

Loss (§3.7): 0.8·mean(w·|Î − GT|) + 0.2·D-SSIM with w = 1 + 4·M_mouth, + 0.1·mean(M_face·(1 − A))
(keeps the face opaque), + GaussianAvatars' position/scale regularisers in triangle units, + a
small penalty on the MLP's offsets. No LPIPS (its backbone weights cannot be downloaded).

Held-out PSNR is measured inside the face oval dilated by 5 % (``eval_masks``), with the head
composited over a flat grey: no pixel of a held-out frame ever reaches its own render.

Imports numpy, torch, safetensors-free and cv2 only; never mediapipe (the GPU machine has none).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

import cv2
import numpy as np
import torch
from torch import Tensor

from engines.gaussian.losses import d_ssim, psnr
from engines.gaussian.model import GaussianHead, HeadConfig
from engines.gaussian.prepare import EnrolError, Prepared
from engines.mesh.geometry import FACE_OVAL

CPU_REFUSAL = "enrolment needs a CUDA GPU; use --tiny for a test-scale head"
EVAL_DILATE = 1.05  # M_eval: the face-oval polygon scaled by 5 % about its centroid (§4.2)
EVAL_BACKGROUND = 0.5  # held-out renders are composited over flat grey, never over the frame itself
EVAL_FRAMES = 64  # held-out frames rendered at each evaluation during the fit (all of them at the end)

Progress = Callable[[dict[str, Any]], None]


class FitCancelled(EnrolError):
    """The fit was cancelled (``cancel`` was set); ``iteration`` is where it stopped."""

    def __init__(self, iteration: int, total: int) -> None:
        super().__init__(f"cancelled at iteration {iteration} of {total}")
        self.iteration = iteration


@dataclass(frozen=True)
class FitConfig:
    """Schedule and losses (§3.7). :meth:`full` is 512², 20k Gaussians, 12k iterations, B = 4;
    :meth:`tiny` is 96², 3k Gaussians, 500 iterations, B = 2 (allowed on a CPU)."""

    head: HeadConfig = field(default_factory=HeadConfig.full)
    iters: int = 12000
    batch: int = 4
    tiny_scale: bool = False  # test scale: the one a CPU may fit
    # learning rates: (start, end) are exponential (positions) or cosine (MLP) schedules
    lr_pos: tuple[float, float] = (5e-3, 5e-5)
    lr_scale: float = 1.7e-2
    lr_rot: float = 1e-3
    lr_opacity: float = 5e-2
    lr_color: float = 2.5e-3
    lr_mlp: tuple[float, float] = (5e-4, 5e-5)
    mlp_warmup: float = 0.1  # MLP frozen for this share of the iterations: appearance settles first
    # loss weights
    mouth_weight: float = 4.0  # w = 1 + 4·M_mouth ("start at 5x and tune")
    ssim_weight: float = 0.2
    alpha_weight: float = 0.1
    pos_weight: float = 1e-2
    scale_weight: float = 1.0
    scale_max: float = 0.6  # triangle units
    dp_weight: float = 1e-2
    dk_weight: float = 1e-3
    # bookkeeping
    eval_every: int = 1000
    seed: int = 0
    tile: int = 16  # torch renderer tiling (speed only, never the image)
    chunk: int = 64

    @classmethod
    def full(cls, **kw: Any) -> "FitConfig":
        return replace(cls(), **kw)

    @classmethod
    def tiny(cls, **kw: Any) -> "FitConfig":
        # tile 8 / chunk 32: measured about 2x faster than 16/64 at 96² on one CPU core
        base = cls(head=HeadConfig.tiny(), iters=500, batch=2, tiny_scale=True, lr_pos=(1e-2, 1e-3),
                   lr_scale=2e-2, lr_rot=2e-3, lr_opacity=5e-2, lr_color=1e-2, lr_mlp=(2e-3, 2e-4),
                   eval_every=100, tile=8, chunk=32)
        return replace(base, **kw)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["head"] = self.head.to_json()
        return d


# --------------------------------------------------------------------------- device and renderer

def resolve_device(device: str, config: FitConfig) -> torch.device:
    """"auto" → CUDA when torch sees one, else the CPU. A full-scale fit on a CPU is refused with
    :data:`CPU_REFUSAL` (it would take hours, §3.7)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EnrolError("--device cuda: torch sees no CUDA GPU here (use --device auto, or --tiny on the CPU)")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise EnrolError(f"unknown device {device!r}: use auto, cuda or cpu")
    if device == "cpu" and not config.tiny_scale:
        raise EnrolError(CPU_REFUSAL)
    return torch.device(device)


def pick_renderer(device: torch.device, config: FitConfig) -> tuple[Callable[..., tuple[Tensor, Tensor]], str]:
    """gsplat on CUDA when it builds, else the project's torch renderer (§0, §3.5)."""
    if device.type == "cuda":
        from engines.gaussian import raster_gsplat

        if raster_gsplat.gsplat_unavailable() is None:
            return raster_gsplat.rasterize, "gsplat"
    from engines.gaussian import raster_torch

    def torch_raster(*args: Any, **kw: Any) -> tuple[Tensor, Tensor]:
        kw.setdefault("tile", config.tile)
        kw.setdefault("chunk", config.chunk)
        return raster_torch.rasterize(*args, **kw)

    return torch_raster, "torch"


# --------------------------------------------------------------------------- masks and rendering

def eval_masks(prepared: Prepared, idx: Any) -> tuple[np.ndarray, np.ndarray]:
    """(M_eval, M_mouth) bool (n, res, res) for frames ``idx`` (§4.2): the face-oval polygon
    dilated by 5 % (the honest metric region: background excluded), and the mouth mask."""
    idx = np.atleast_1d(idx)
    res = prepared.res
    face = np.zeros((len(idx), res, res), np.uint8)
    for j, i in enumerate(idx):
        oval = prepared.landmarks[i][list(FACE_OVAL), :2].astype(np.float64)
        oval = oval.mean(0) + EVAL_DILATE * (oval - oval.mean(0)) - 0.5  # -0.5: pixel-centre convention
        cv2.fillPoly(face[j], [np.round(oval * 16).astype(np.int32)], 1, shift=4)
    mouth = prepared.masks(idx)[:, 2] > 0.5
    return face.astype(bool), mouth


def render_frames(head: GaussianHead, prepared: Prepared, idx: Any, *, drive: np.ndarray | None = None,
                  size: int | None = None, background: float | np.ndarray = EVAL_BACKGROUND,
                  renderer: Callable[..., tuple[Tensor, Tensor]] | None = None, batch: int = 8
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Renders frames ``idx`` at their poses (and their drive vectors, or ``drive`` (n, 5)):
    (rgb (n, S, S, 3) float32 composited over ``background`` — a grey level or an (n, S, S, 3)
    plate in [0, 1] — and alpha (n, S, S, 1)). No gradients."""
    idx = np.atleast_1d(idx)
    d_all = prepared.drive[idx] if drive is None else np.asarray(drive, np.float32)
    dev = head.v0.device
    rgbs, alphas = [], []
    with torch.no_grad():
        for s in range(0, len(idx), batch):
            sl = slice(s, s + batch)
            d = torch.as_tensor(d_all[sl], device=dev)
            pose = torch.as_tensor(prepared.pose[idx[sl]], device=dev)
            rgb, alpha = head.render(d, pose, size, rasterize=renderer)
            rgbs.append(rgb.cpu().numpy())
            alphas.append(alpha.cpu().numpy())
    rgb, alpha = np.concatenate(rgbs), np.concatenate(alphas)
    bg = np.asarray(background, np.float32)
    return rgb + (1.0 - alpha) * bg, alpha


def heldout_psnr(head: GaussianHead, prepared: Prepared, idx: Any, *,
                 renderer: Callable[..., tuple[Tensor, Tensor]] | None = None,
                 masks: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
    """PSNR (dB, one MSE pooled over the frames) inside M_eval ("face") and M_mouth ("mouth")."""
    idx = np.atleast_1d(idx)
    rgb, _ = render_frames(head, prepared, idx, renderer=renderer)
    gt = prepared.crops(idx).astype(np.float32) / 255.0
    face, mouth = eval_masks(prepared, idx) if masks is None else masks
    a, b = torch.from_numpy(rgb), torch.from_numpy(gt)
    return {"face": float(psnr(a, b, torch.from_numpy(face))), "mouth": float(psnr(a, b, torch.from_numpy(mouth)))}


# --------------------------------------------------------------------------- the fit

def _param_groups(head: GaussianHead, config: FitConfig) -> list[dict[str, Any]]:
    p = head.gaussian_parameters()
    return [
        {"name": "local_pos", "params": [p["local_pos"]], "lr": config.lr_pos[0]},
        {"name": "log_scale", "params": [p["log_scale"]], "lr": config.lr_scale},
        {"name": "rot", "params": [p["rot"]], "lr": config.lr_rot},
        {"name": "opacity_logit", "params": [p["opacity_logit"]], "lr": config.lr_opacity},
        {"name": "color_logit", "params": [p["color_logit"]], "lr": config.lr_color},
        {"name": "mlp", "params": head.mlp_parameters(), "lr": config.lr_mlp[0]},
    ]


def _schedule(optimiser: torch.optim.Optimizer, config: FitConfig, it: int) -> None:
    """Positions decay exponentially (GaussianAvatars), the MLP by a cosine (after its warm-up)."""
    t = it / max(1, config.iters - 1)
    warm = config.mlp_warmup
    for group in optimiser.param_groups:
        if group["name"] == "local_pos":
            a, b = config.lr_pos
            group["lr"] = a * (b / a) ** t
        elif group["name"] == "mlp":
            a, b = config.lr_mlp
            u = max(0.0, (t - warm) / max(1e-9, 1 - warm))
            group["lr"] = b + 0.5 * (a - b) * (1 + math.cos(math.pi * u))


class _Frames:
    """The training data on the fit's device: uint8 crops and masks (converted per batch, so a
    full-scale clip stays ~4 bytes per pixel), drive vectors and poses."""

    def __init__(self, prepared: Prepared, device: torch.device, chunk: int = 64) -> None:
        n = prepared.n_frames
        crops, masks = [], []
        for s in range(0, n, chunk):
            idx = np.arange(s, min(n, s + chunk))
            crops.append(prepared.crops(idx))
            masks.append(np.round(prepared.masks(idx) * 255).astype(np.uint8))
        self.crops = torch.from_numpy(np.concatenate(crops)).to(device)
        self.masks = torch.from_numpy(np.concatenate(masks)).to(device)  # (F, 3, R, R): face, region, mouth
        self.drive = torch.from_numpy(prepared.drive.astype(np.float32)).to(device)
        self.pose = torch.from_numpy(prepared.pose.astype(np.float32)).to(device)

    def batch(self, idx: np.ndarray) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        i = torch.as_tensor(idx, device=self.crops.device)
        return self.crops[i].float() / 255.0, self.masks[i].float() / 255.0, self.drive[i], self.pose[i]


def _loss(head: GaussianHead, renderer: Callable[..., tuple[Tensor, Tensor]], frames: _Frames,
          idx: np.ndarray, config: FitConfig, gen: torch.Generator) -> tuple[Tensor, dict[str, float]]:
    gt, masks, d, pose = frames.batch(idx)
    face, region, mouth = masks[:, 0], masks[:, 1, ..., None], masks[:, 2]
    g = head(d, pose, with_deltas=True)
    res = head.config.res
    rgb, alpha = renderer(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"],
                          head.cameras(len(idx)), res, res, z0=head.config.z0, eps2d=head.config.eps2d)
    # the plate: a random colour inside the rendered region, the frame outside (§3.6): inside
    # the region only opaque Gaussians can match the target
    colour = torch.rand(len(idx), 3, generator=gen).to(gt.device)
    plate = region * colour[:, None, None, :] + (1.0 - region) * gt
    comp = rgb + (1.0 - alpha) * plate
    w = 1.0 + config.mouth_weight * mouth
    l1 = (w[..., None] * (comp - gt).abs()).mean()
    l_ssim = d_ssim(comp, gt)
    l_alpha = (face * (1.0 - alpha[..., 0])).mean()
    l_pos = torch.relu(g["local"].norm(dim=-1) - 1.0).mean()
    l_scale = torch.relu(torch.exp(g["log_scale_local"]) - config.scale_max).mean()
    l_dp = (g["delta_dp"] ** 2).sum(-1).mean() if "delta_dp" in g else torch.zeros((), device=gt.device)
    l_dk = (g["delta_dk"] ** 2).sum(-1).mean() if "delta_dk" in g else torch.zeros((), device=gt.device)
    loss = ((1.0 - config.ssim_weight) * l1 + config.ssim_weight * l_ssim + config.alpha_weight * l_alpha
            + config.pos_weight * l_pos + config.scale_weight * l_scale
            + config.dp_weight * l_dp + config.dk_weight * l_dk)
    return loss, {"l1": float(l1.detach()), "dssim": float(l_ssim.detach()), "alpha": float(l_alpha.detach())}


def fit(prepared: Prepared, config: FitConfig | None = None, *, device: str = "cpu",
        progress: Progress | None = None, cancel: threading.Event | None = None
        ) -> tuple[GaussianHead, dict[str, Any]]:
    """Fits a head to ``prepared`` (§3.7). Returns (head on ``device``, metrics).

    ``progress`` gets a dict per iteration: stage "fit", iteration (1-based, done so far), total,
    loss (smoothed), heldout_psnr (the latest evaluation, dB inside M_eval; the first is the
    initial head's), seconds_left, and the loss terms l1, dssim, alpha. Setting ``cancel`` stops within one iteration by raising :class:`FitCancelled`.
    A full-scale config on a CPU raises :class:`EnrolError` (:data:`CPU_REFUSAL`)."""
    config = config or FitConfig.tiny()
    dev = resolve_device(device, config)
    if int(prepared.res) != config.head.res:
        raise EnrolError(f"the prepared clip is at {prepared.res}² but the fit asks for {config.head.res}²: prepare it again at that size")
    train, held = prepared.train_idx, prepared.heldout_idx
    if len(train) < config.batch or len(held) == 0:
        raise EnrolError(f"too few tracked frames ({prepared.n_frames}) to fit a head: use a longer video")
    report = progress or (lambda info: None)
    t_start = time.perf_counter()
    gen = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)

    head = GaussianHead.from_prepared(prepared, config.head).to(dev)
    renderer, renderer_name = pick_renderer(dev, config)
    frames = _Frames(prepared, dev)
    if cancel is not None and cancel.is_set():  # loading a long clip takes a while
        raise FitCancelled(0, config.iters)
    # during the fit, at most EVAL_FRAMES held-out frames (evenly spread) are rendered; the final
    # figure uses them all
    watch = held[np.linspace(0, len(held) - 1, min(len(held), EVAL_FRAMES)).round().astype(int)]
    watch_masks = eval_masks(prepared, watch)
    optimiser = torch.optim.Adam(_param_groups(head, config), eps=1e-15)  # 3DGS's eps

    def evaluate(final: bool = False) -> dict[str, float]:
        if final and len(watch) < len(held):
            return heldout_psnr(head, prepared, held, renderer=renderer)
        return heldout_psnr(head, prepared, watch, renderer=renderer, masks=watch_masks)

    history = [{"iteration": 0, **evaluate(final=True)}]
    latest = history[-1]["face"]
    order: list[int] = []
    warm_iters = int(round(config.mlp_warmup * config.iters))
    fit_start = time.perf_counter()
    loss_avg = None
    for it in range(config.iters):
        if cancel is not None and cancel.is_set():
            raise FitCancelled(it, config.iters)
        _schedule(optimiser, config, it)
        for p in head.mlp_parameters():
            p.requires_grad_(it >= warm_iters)
        if len(order) < config.batch:  # epochs of shuffled training frames
            order += rng.permutation(train).tolist()
        idx, order = np.asarray(order[:config.batch]), order[config.batch:]
        loss, parts = _loss(head, renderer, frames, idx, config, gen)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        value = float(loss.detach())
        loss_avg = value if loss_avg is None else 0.9 * loss_avg + 0.1 * value
        done = it + 1
        if done % config.eval_every == 0 or done == config.iters:
            history.append({"iteration": done, **evaluate(final=done == config.iters)})
            latest = history[-1]["face"]
        elapsed = time.perf_counter() - fit_start
        report({"stage": "fit", "iteration": done, "total": config.iters, "loss": loss_avg,
                "heldout_psnr": latest, "seconds_left": elapsed / done * (config.iters - done), **parts})
    fit_seconds = time.perf_counter() - fit_start

    # train PSNR on as many training frames as are held out (G4: memorisation check), and the tail
    sample = train[np.linspace(0, len(train) - 1, min(len(train), len(held), 4 * EVAL_FRAMES)).round().astype(int)]
    train_psnr = heldout_psnr(head, prepared, sample, renderer=renderer)
    tail = prepared.tail_idx
    tail_psnr = heldout_psnr(head, prepared, tail, renderer=renderer) if len(tail) else None
    final = history[-1]
    metrics = {
        "iterations": config.iters, "heldout_psnr": final["face"], "heldout_psnr_mouth": final["mouth"],
        "heldout_psnr_init": history[0]["face"], "train_psnr": train_psnr["face"],
        "train_psnr_mouth": train_psnr["mouth"], "tail_psnr": None if tail_psnr is None else tail_psnr["face"],
        "history": history, "fit_seconds": fit_seconds, "seconds": time.perf_counter() - t_start,
        "seconds_per_iter": fit_seconds / max(1, config.iters), "device": str(dev), "renderer": renderer_name,
        "n_gaussians": head.n_gaussians, "res": config.head.res, "heldout_frames": int(len(held)),
        "train_frames": int(len(train)), "config": config.to_json(),
    }
    return head, metrics
