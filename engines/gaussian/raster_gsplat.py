"""gsplat 1.5.3's CUDA rasterizer behind the same call as raster_torch.rasterize (spec
gaussian.md §1.3, §3.5). gsplat is imported only when used, so this module imports everywhere;
`gsplat_unavailable()` says why it cannot run (it has no CPU path at all, §1.4).

Camera: gsplat wants world-to-camera `viewmats` [B, C, 4, 4] and `Ks` [B, C, 3, 3] with one
camera (C = 1) per scene; ours is the identity rotation with translation (0, 0, z0), so camera
depth = z + z0. gsplat culls depths below near_plane = 0.01 (and sorts depths by their float
bits, which is wrong for negative values), so z0 must make every depth positive (§3.4);
raster_torch has no near plane, and the two agree whenever that holds."""

from __future__ import annotations

import functools
import importlib.util
import logging
import time

import torch
from torch import Tensor

GSPLAT_VERSION = "1.5.3"
log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def gsplat_unavailable() -> str | None:
    """None if gsplat can rasterize here, else the reason. Never raises. The first call on a
    CUDA machine loads gsplat's CUDA extension, which JIT-builds it if needed (minutes,
    §1.2); the answer is cached for the process."""
    if importlib.util.find_spec("gsplat") is None:
        return f"gsplat is not installed (pip install gsplat=={GSPLAT_VERSION})"
    try:
        import gsplat  # noqa: F401
    except Exception as e:  # a broken install or a missing dependency (jaxtyping, rich, ...)
        return f"gsplat cannot be imported: {type(e).__name__}: {e}"
    if not torch.cuda.is_available():
        return "no CUDA device: gsplat has no CPU rasterizer (use raster_torch)"
    log.warning("gsplat: loading its CUDA kernels; the first time on this machine they are compiled, "
                "which takes several minutes (later starts reuse the build)")
    started = time.monotonic()
    try:
        from gsplat.cuda._backend import _C
    except Exception as e:  # the JIT build failed (nvcc/CUDA/torch mismatch, ...)
        reason = f"gsplat's CUDA extension failed to build or load: {type(e).__name__}: {e}"
    else:
        reason = None if _C is not None else "gsplat found no CUDA toolkit (nvcc) to build its CUDA extension"
    if reason is None:
        log.warning("gsplat: CUDA kernels ready in %.0f s", time.monotonic() - started)
    else:
        log.warning("gsplat: %s; falling back to the project's torch rasteriser on the GPU", reason)
    return reason


def rasterize(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
              Ks: Tensor, width: int, height: int, *, z0: float = 0.0, eps2d: float = 0.3,
              tile: int = 16, chunk: int = 64,
              background: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Same inputs and outputs as raster_torch.rasterize: means [B, N, 3], quats [B, N, 4]
    (w, x, y, z), scales [B, N, 3], opacities [B, N], colors [B, N, D], Ks [B, 3, 3],
    background [B, D] or None -> rgb [B, H, W, D], alpha [B, H, W, 1]. All on one CUDA device.
    `chunk` is unused (gsplat composites per pixel); `tile` is gsplat's tile_size.
    Not differentiable in Ks (gsplat's limitation). Raises RuntimeError where unavailable."""
    reason = gsplat_unavailable()
    if reason is not None:
        raise RuntimeError(reason)
    from gsplat import rasterization

    B = means.shape[0]
    viewmats = torch.eye(4, device=means.device, dtype=means.dtype).repeat(B, 1, 1, 1)
    viewmats[:, :, 2, 3] = z0  # world -> camera: z_cam = z + z0
    backgrounds = None if background is None else background[:, None, :]  # [B, 1, D]
    rgb, alpha, _meta = rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks[:, None], width, height,
        eps2d=eps2d, sh_degree=None, packed=False, tile_size=tile, backgrounds=backgrounds,
        render_mode="RGB", rasterize_mode="classic", camera_model="ortho")
    return rgb[:, 0], alpha[:, 0]  # drop the camera axis: [B, 1, H, W, D] -> [B, H, W, D]
