"""Image losses for fitting a Gaussian head (spec gaussian.md §3.7): SSIM with an 11×11 Gaussian
window (Wang et al. 2004, the standard constants K1 = 0.01, K2 = 0.03 for a data range of 1),
D-SSIM = 1 − SSIM, and PSNR. Pure torch, differentiable, images [B, H, W, C] in [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

C1 = 0.01 ** 2
C2 = 0.03 ** 2


def _gaussian_1d(window: int, sigma: float, like: Tensor) -> Tensor:
    x = torch.arange(window, device=like.device, dtype=like.dtype) - (window - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def _blur(x: Tensor, g: Tensor) -> Tensor:
    """Separable Gaussian filter of [B, C, H, W], 'valid' (no padding, as the reference
    implementation: no border artefacts enter the mean)."""
    ch, w = x.shape[1], g.numel()
    x = F.conv2d(x, g.view(1, 1, 1, w).expand(ch, 1, 1, w), groups=ch)
    return F.conv2d(x, g.view(1, 1, w, 1).expand(ch, 1, w, 1), groups=ch)


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM of two [B, H, W, C] images in [0, 1] (a scalar tensor; 1 for equal images).
    H and W must be at least `window`."""
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"ssim needs two [B, H, W, C] images, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if min(a.shape[1], a.shape[2]) < window:
        raise ValueError(f"ssim: image {a.shape[1]}x{a.shape[2]} is smaller than the window "
                         f"{window}")
    x, y = a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2)
    g = _gaussian_1d(window, sigma, x)
    mx, my = _blur(x, g), _blur(y, g)
    sxx = _blur(x * x, g) - mx * mx
    syy = _blur(y * y, g) - my * my
    sxy = _blur(x * y, g) - mx * my
    num = (2 * mx * my + C1) * (2 * sxy + C2)
    den = (mx * mx + my * my + C1) * (sxx + syy + C2)
    return (num / den).mean()


def d_ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """1 − SSIM: 0 for equal images."""
    return 1.0 - ssim(a, b, window, sigma)


def psnr(a: Tensor, b: Tensor, mask: Tensor | None = None) -> Tensor:
    """PSNR in dB for a data range of 1, over the whole batch (one mean squared error pooled
    over every pixel and channel). mask [B, H, W] or [B, H, W, 1], bool or weights, restricts
    the mean to its pixels. Equal images give +inf."""
    err = (a - b) ** 2
    if mask is None:
        mse = err.mean()
    else:
        m = mask.to(err.dtype)
        if m.dim() == err.dim() - 1:
            m = m[..., None]
        m = m.expand_as(err)
        mse = (err * m).sum() / m.sum()
    return -10.0 * torch.log10(mse)
