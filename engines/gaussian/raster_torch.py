"""Pure-torch, differentiable, tile-based EWA rasterizer of 3D Gaussians under an orthographic
camera, with the semantics of gsplat 1.5.3's `rasterization(camera_model="ortho",
rasterize_mode="classic")` (spec gaussian.md §1.3, §3.5). It is the CPU renderer (tests, tiny
enrolment, debugging) and the CUDA fallback when gsplat cannot be built.

Semantics (all as gsplat's CUDA kernels do it):
- projection: μ2D = (fx·x + cx, fy·y + cy), Σ2D = J·Σ3D[:2,:2]·Jᵀ + eps2d·I with J = diag(fx, fy)
  (K's skew K[0,1] is ignored, as in gsplat); Σ3D = R·diag(s²)·Rᵀ, R from the normalised
  quaternion (w, x, y, z); depth = z + z0. Unlike gsplat there is no near/far-plane culling:
  gsplat drops depths < 0.01, so keep depths positive (z0 = 10·crop side, §3.4) for parity.
- culling: opacity < 1/255, det(Σ2D) <= 0, or a bounding box entirely off the image. The box half
  sizes are ceil(e·√Σ2D_xx) and ceil(e·√Σ2D_yy) with e = min(3.33, √(2·ln(255·o))): gsplat's
  opacity-aware extent, which is exactly the box of the region where α >= 1/255, so tiling
  never changes the image.
- compositing, per pixel centre (j + 0.5, i + 0.5), front to back by depth (ties: input order):
  σ = ½(a·dx² + c·dy²) + b·dx·dy with conic [[a, b], [b, c]] = Σ2D⁻¹, α = min(0.999, o·e^(−σ));
  a Gaussian is skipped where α < 1/255 (gsplat also skips σ < 0, which a positive-definite
  Σ2D never gives); the pixel stops at the first Gaussian that would bring T to <= 1e-4, which
  is itself excluded. rgb = Σ α·T·c (+ T_final·background), alpha = 1 − T_final.

Algorithm: project (autograd), bin (Gaussian, tile) pairs sorted by tile then depth, then
composite chunks of `chunk` Gaussians for all tiles at once as [tiles, chunk, tile²] tensors,
carrying each pixel's transmittance from chunk to chunk. log α is a quadratic polynomial in
the pixel coordinates, so one matrix product gives it for a whole chunk. Compositing is one
autograd Function with a hand-written backward that recomputes each chunk from its saved
incoming transmittance, walking the chunks back to front (gsplat's scheme). Memory is bounded
by one step (at most MAX_STEP_ELEMENTS elements per temporary, about ten temporaries) plus a
[tiles, tile²] transmittance per chunk; no [N, H, W] tensor and no autograd graph of the
compositing is ever kept. Inference (no grad) keeps nothing. The price of the polynomial is
some float32 accuracy: against float64 the rgb error is about 3e-6 at tile 16 and 1e-5 at tile
32 with eps2d = 0.3 (it grows as eps2d -> 0 for sub-pixel splats); float64 agrees to 1e-12.

Cost: roughly 13 passes over [pairs, tile²] forward and 35 backward (recompute included),
where pairs are the (Gaussian, tile) intersections padded to the chunk size; each pass is
memory-bound, about 1-2 ns per element on one CPU core. Smaller tiles waste fewer pixels on
small splats: on CPU, tile=8, chunk=32 is about 1.7x faster than the defaults. Measured on a
shared 2-core machine (torch 2.13, best of 10): 96² with 3k Gaussians of 2-5 px (about 6k pairs
at tile 16) forward + backward 19 + 40 ms on 2 threads (31 + 64 ms on 1) with the defaults,
12 + 20 ms (17 + 29 ms) with tile=8, chunk=32; 512² with 20k Gaussians of about 9 px, forward
only, 0.56 s on 1 thread with the defaults and 0.36 s with tile=8, chunk=32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

ALPHA_MIN = 1.0 / 255.0  # gsplat's ALPHA_THRESHOLD
ALPHA_MAX = 0.999
T_MIN = 1e-4  # a pixel is done once T would drop to this or below
EXTEND = 3.33  # box half size in standard deviations, before the opacity-aware bound

# Upper bound on tiles × chunk × tile² per compositing step: tiles are processed in groups so
# that one temporary stays at or below this many elements. CPU: 16 MB in float32, cache-sized;
# CUDA: 128 MB, so that a batch of 512² images takes few steps (each costs kernel launches).
MAX_STEP_ELEMENTS = 1 << 22
MAX_STEP_ELEMENTS_CUDA = 1 << 25


class Projection(NamedTuple):
    """Gaussians on the image plane, [B, N, ...] each; culled ones have radii == 0."""

    means2d: Tensor  # [B, N, 2] pixels
    conics: Tensor  # [B, N, 3] (a, b, c) of Σ2D⁻¹ = [[a, b], [b, c]]
    depths: Tensor  # [B, N]
    radii: Tensor  # [B, N, 2] int64 box half sizes in pixels (x, y); 0 where culled


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """[..., 4] (w, x, y, z), any norm -> [..., 3, 3] rotation matrices."""
    w, x, y, z = (quats / quats.norm(dim=-1, keepdim=True)).unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    )
    return torch.stack(rows, dim=-1).unflatten(-1, (3, 3))


def project(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, Ks: Tensor,
            width: int, height: int, *, z0: float = 0.0, eps2d: float = 0.3) -> Projection:
    """Orthographic EWA projection of [B, N] Gaussians with intrinsics Ks [B, 3, 3].
    Differentiable in means, quats, scales (and Ks); radii and culling are not."""
    rot = quat_to_rotmat(quats)  # [B, N, 3, 3]
    # only Σ3D's x/y block reaches the image: rows 0 and 1 of R·diag(s)
    m = rot[..., :2, :] * scales[..., None, :]  # [B, N, 2, 3]
    sxx = (m[..., 0, :] * m[..., 0, :]).sum(-1)
    sxy = (m[..., 0, :] * m[..., 1, :]).sum(-1)
    syy = (m[..., 1, :] * m[..., 1, :]).sum(-1)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [B, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    a = fx * fx * sxx + eps2d
    b = fx * fy * sxy
    c = fy * fy * syy + eps2d
    det = a * c - b * b
    ok = det > 0
    # a safe det keeps culled rows finite so their (zero) gradients stay finite too
    det_safe = torch.where(ok, det, torch.ones_like(det))
    conics = torch.stack((c / det_safe, -b / det_safe, a / det_safe), dim=-1)
    means2d = torch.stack((fx * means[..., 0] + cx, fy * means[..., 1] + cy), dim=-1)
    depths = means[..., 2] + z0

    with torch.no_grad():
        o = opacities.detach()
        ok = ok & (o >= ALPHA_MIN)
        # opacity-aware extent: beyond it o·e^(−σ) < 1/255 (arXiv 2402.00525 §B.2, as gsplat)
        extend = torch.sqrt(2.0 * torch.log(o.clamp(min=ALPHA_MIN) / ALPHA_MIN)).clamp(max=EXTEND)
        rx = torch.ceil(extend * torch.sqrt(a.detach().clamp(min=0)))
        ry = torch.ceil(extend * torch.sqrt(c.detach().clamp(min=0)))
        mx, my = means2d[..., 0].detach(), means2d[..., 1].detach()
        ok = ok & ((rx > 0) & (ry > 0))
        ok = ok & (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        ok = ok & torch.isfinite(mx) & torch.isfinite(my)
        radii = torch.stack((rx, ry), dim=-1).masked_fill(~ok[..., None], 0).long()
    return Projection(means2d, conics, depths, radii)


@dataclass
class _Plan:
    """(Gaussian, tile) intersections sorted by tile then depth, for B·tiles global tiles."""

    ids: Tensor  # [pairs] flat Gaussian index (b·N + n)
    offsets: Tensor  # [B·tiles] first pair of each tile
    counts: Tensor  # [B·tiles] pairs per tile
    tiles_x: int
    tiles_y: int
    tile: int
    chunk: int


def _bin(proj: Projection, width: int, height: int, tile: int, chunk: int) -> _Plan:
    """Expands each visible Gaussian into the tiles its box touches (gsplat's isect_tiles:
    floor/ceil of (μ ± r) / tile, clamped to the grid) and sorts the pairs."""
    B, N = proj.depths.shape
    tiles_x, tiles_y = math.ceil(width / tile), math.ceil(height / tile)
    n_tiles = tiles_x * tiles_y
    dev = proj.depths.device
    with torch.no_grad():
        radii = proj.radii.reshape(-1, 2)
        vis = torch.nonzero((radii > 0).all(-1)).squeeze(1)
        # depth order first; the stable sort by tile below keeps it within each tile
        order = torch.argsort(proj.depths.detach().reshape(-1)[vis], stable=True)
        vis = vis[order]
        m2 = proj.means2d.detach().reshape(-1, 2)[vis]
        r = radii[vis].to(m2.dtype)
        x0 = torch.floor((m2[:, 0] - r[:, 0]) / tile).clamp(0, tiles_x).long()
        x1 = torch.ceil((m2[:, 0] + r[:, 0]) / tile).clamp(0, tiles_x).long()
        y0 = torch.floor((m2[:, 1] - r[:, 1]) / tile).clamp(0, tiles_y).long()
        y1 = torch.ceil((m2[:, 1] + r[:, 1]) / tile).clamp(0, tiles_y).long()
        nx, ny = x1 - x0, y1 - y0
        per = nx * ny
        n_pairs = int(per.sum())
        pair_g = torch.repeat_interleave(torch.arange(vis.numel(), device=dev), per)
        first = torch.cumsum(per, 0) - per
        local = torch.arange(n_pairs, device=dev) - first[pair_g]
        tx = x0[pair_g] + local % nx[pair_g]
        ty = y0[pair_g] + local // nx[pair_g]
        key = (vis[pair_g] // N) * n_tiles + ty * tiles_x + tx
        key, perm = torch.sort(key, stable=True)
        ids = vis[pair_g[perm]]
        counts = torch.bincount(key, minlength=B * n_tiles)
        offsets = torch.cumsum(counts, 0) - counts
    return _Plan(ids, offsets, counts, tiles_x, tiles_y, tile, chunk)


class _Step(NamedTuple):
    tiles: Tensor  # [A] global tile ids
    gid: Tensor  # [A, K] flat Gaussian ids, M (the zero-opacity dummy) for padding
    t_run: Tensor  # [A, P] transmittance before this chunk, 0 where the pixel has stopped


def _basis(tile: int, like: Tensor) -> Tensor:
    """[6, P]: (u², v², u·v, u, v, 1) of each pixel centre relative to the tile's centre
    (row-major in the tile). The same for every tile."""
    p = torch.arange(tile * tile, device=like.device)
    u = ((p % tile) + 0.5 - tile / 2).to(like.dtype)
    v = ((p // tile) + 0.5 - tile / 2).to(like.dtype)
    return torch.stack((u * u, v * v, u * v, u, v, torch.ones_like(u)))


def _local_means(means2d: Tensor, step: _Step, plan: _Plan) -> tuple[Tensor, Tensor]:
    """Means relative to their tile's centre, [A, K] each."""
    t = plan.tile
    local = step.tiles % (plan.tiles_x * plan.tiles_y)
    ox = (local % plan.tiles_x * t + t / 2).to(means2d.dtype)
    oy = (local // plan.tiles_x * t + t / 2).to(means2d.dtype)
    mu = means2d[step.gid]
    return mu[..., 0] - ox[:, None], mu[..., 1] - oy[:, None]


def _coefficients(means2d: Tensor, conics: Tensor, log_opac: Tensor, step: _Step,
                  plan: _Plan) -> Tensor:
    """[A, K, 6]: log(o·e^(−σ)) = log o − σ as a quadratic polynomial in the tile-local pixel
    coordinates (u, v). WHY: one [A·K, 6] × [6, P] matrix product then replaces the ten
    elementwise [A, K, P] passes of evaluating dx, dy and σ directly (the cost of this
    renderer is memory traffic over [A, K, P]). Centring on the tile keeps |u|, |v| <= tile/2
    so the expanded terms stay small (float32 error on σ about 1e-5 at most)."""
    mu, mv = _local_means(means2d, step, plan)
    con = conics[step.gid]
    a, b, c = con[..., 0], con[..., 1], con[..., 2]
    const = log_opac[step.gid] - (0.5 * a * mu * mu + 0.5 * c * mv * mv + b * mu * mv)
    return torch.stack((-0.5 * a, -0.5 * c, -b, a * mu + b * mv, c * mv + b * mu, const), -1)


class _Chunk(NamedTuple):
    raw: Tensor  # [A, K, P] o·e^(−σ), clamped below at e^(−30)
    alpha: Tensor  # min(0.999, raw), 0 where raw < 1/255
    dead: Tensor  # bool: the pixel stopped before or at this Gaussian, which does not count
    t_excl: Tensor  # T before each Gaussian (a view of t_after)
    t_after: Tensor  # [A, K + 1, P]: T before Gaussian 0, after 0, after 1, ...


def _chunk(coef: Tensor, basis: Tensor, t_run: Tensor, keep_raw: bool) -> _Chunk:
    """The compositing math of one chunk for A tiles × K Gaussians × P pixels (no autograd).
    In-place ops on purpose: this is the hot loop, and its cost is passes over [A, K, P]."""
    A, K, _ = coef.shape
    logit = (coef.reshape(A * K, 6) @ basis).view(A, K, -1)
    # WHY the lower clamp: e^x below ~1e-38 is a float32 denormal, 10-100x slower on CPUs;
    # anything below 1/255 is dropped anyway
    raw = logit.clamp_(min=-30.0).exp_()
    alpha = raw.clamp(max=ALPHA_MAX) if keep_raw else raw.clamp_(max=ALPHA_MAX)
    alpha.masked_fill_(alpha < ALPHA_MIN, 0.0)
    t_after = torch.empty(A, K + 1, alpha.shape[-1], dtype=alpha.dtype, device=alpha.device)
    t_after[:, 0] = t_run
    torch.sub(1.0, alpha, out=t_after[:, 1:])
    t_after.cumprod_(dim=1)
    # T is non-increasing, so `dead` is a suffix: everything from the first Gaussian that
    # would bring T to <= 1e-4 on is excluded, as gsplat's per-pixel loop breaks there
    dead = t_after[:, 1:] <= T_MIN
    return _Chunk(raw, alpha, dead, t_after[:, :-1], t_after)


def _weights(ch: _Chunk) -> Tensor:
    """w = α·T where the Gaussian counts, else 0: [A, K, P]."""
    return (ch.alpha * ch.t_excl).masked_fill_(ch.dead, 0.0)


def _padded(means2d: Tensor, conics: Tensor, opacities: Tensor,
            colors: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Appends a zero-opacity dummy Gaussian (index M) that pads the chunks: log o = −inf,
    so α = 0 there."""
    return (torch.cat((means2d, means2d.new_zeros(1, 2))),
            torch.cat((conics, conics.new_zeros(1, 3))),
            torch.cat((opacities, opacities.new_zeros(1))),
            torch.cat((colors, colors.new_zeros(1, colors.shape[1]))))


def _composite(means2d_p: Tensor, conics_p: Tensor, opac_p: Tensor, colors_p: Tensor,
               plan: _Plan, steps: list[_Step] | None) -> tuple[Tensor, Tensor]:
    """Forward compositing of padded [M + 1, ...] Gaussians: (colour sum [B·tiles, P, D],
    final T [B·tiles, P]). Appends each step to `steps` when given (for the backward)."""
    M, D = colors_p.shape[0] - 1, colors_p.shape[1]
    P = plan.tile * plan.tile
    n_tiles = plan.counts.numel()
    dev, dt = colors_p.device, colors_p.dtype
    log_opac = torch.log(opac_p)
    basis = _basis(plan.tile, colors_p)
    acc = torch.zeros(n_tiles, P, D, device=dev, dtype=dt)
    trans = torch.ones(n_tiles, P, device=dev, dtype=dt)
    done = torch.zeros(n_tiles, P, device=dev, dtype=torch.bool)
    active = torch.nonzero(plan.counts > 0).squeeze(1)
    k0 = 0
    while active.numel() > 0:
        k = min(plan.chunk, int(plan.counts[active].max()) - k0)
        budget = MAX_STEP_ELEMENTS_CUDA if dev.type == "cuda" else MAX_STEP_ELEMENTS
        group = max(1, budget // (k * P))
        ar = torch.arange(k0, k0 + k, device=dev)
        for tiles in active.split(group):
            idx = plan.offsets[tiles, None] + ar
            real = ar < plan.counts[tiles, None]
            gid = torch.where(real, plan.ids[idx.clamp(max=plan.ids.numel() - 1)], M)
            t_in = trans[tiles]
            step = _Step(tiles, gid, t_in.masked_fill(done[tiles], 0.0))
            ch = _chunk(_coefficients(means2d_p, conics_p, log_opac, step, plan), basis,
                        step.t_run, keep_raw=False)
            acc[tiles] += torch.bmm(_weights(ch).transpose(1, 2), colors_p[gid])
            # T after the last counted Gaussian; a pixel stopped before keeps its T
            n_live = k - ch.dead.sum(dim=1, keepdim=True)
            t_out = ch.t_after.gather(1, n_live).squeeze(1)
            trans[tiles] = torch.where(step.t_run > 0, t_out, t_in)
            done[tiles] = ch.t_after[:, -1] <= T_MIN
            if steps is not None:
                steps.append(step)
        k0 += plan.chunk
        more = (plan.counts[active] > k0) & ~done[active].all(dim=1)
        active = active[more]
    return acc, trans


class _Composite(torch.autograd.Function):
    """(means2d, conics, opacities, colors) [M, ...] -> (colour sum [B·tiles, P, D],
    final transmittance [B·tiles, P]). Backward recomputes chunk by chunk, back to front,
    from the saved inputs and each step's incoming T ([tiles, P] per chunk: small)."""

    @staticmethod
    def forward(ctx, means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor,
                plan: _Plan) -> tuple[Tensor, Tensor]:
        padded = _padded(means2d, conics, opacities, colors)
        steps: list[_Step] = []
        acc, trans = _composite(*padded, plan, steps)
        ctx.save_for_backward(*padded, trans)
        ctx.steps, ctx.plan, ctx.M = steps, plan, colors.shape[0]
        return acc, trans

    @staticmethod
    @once_differentiable
    def backward(ctx, g_acc: Tensor, g_trans: Tensor):
        means2d_p, conics_p, opac_p, colors_p, trans = ctx.saved_tensors
        plan, M = ctx.plan, ctx.M
        log_opac = torch.log(opac_p)
        basis = _basis(plan.tile, colors_p)
        g_means = torch.zeros_like(means2d_p)
        g_conics = torch.zeros_like(conics_p)
        g_opac = torch.zeros_like(opac_p)
        g_colors = torch.zeros_like(colors_p)
        g_acc = g_acc.contiguous()
        # rest[t, p]: what lies behind the current chunk, sum over later Gaussians j of
        # w_j·(c_j·g) plus T_final·dL/dT_final; it scales with (1 − α_k) of every k in front
        rest = trans * g_trans
        for step in reversed(ctx.steps):
            coef = _coefficients(means2d_p, conics_p, log_opac, step, plan)
            ch = _chunk(coef, basis, step.t_run, keep_raw=True)
            A, K, P = ch.raw.shape
            g_pix = g_acc[step.tiles]  # [A, P, D]
            col = colors_p[step.gid]  # [A, K, D]
            gc = torch.bmm(col, g_pix.transpose(1, 2))  # [A, K, P]: c_k·g
            w = _weights(ch)
            csum = torch.cumsum(w * gc, dim=1)
            rest_t = rest[step.tiles]
            total = csum[:, -1]
            rest[step.tiles] = rest_t + total
            behind = (rest_t + total)[:, None, :] - csum  # Σ over Gaussians behind k
            # rgb = Σ w_k c_k + ..., w_k = α_k·T_k: dL/dα_k = T_k·(c_k·g) − behind_k/(1 − α_k)
            g_log = ch.t_excl * gc
            g_log.sub_(behind.div_(1.0 - ch.alpha))
            # α = min(0.999, e^logit): dα/dlogit = α where α is neither clamped nor dropped
            flat = ch.dead | (ch.raw < ALPHA_MIN) | (ch.raw >= ALPHA_MAX)
            g_log.mul_(ch.raw).masked_fill_(flat, 0.0)
            # moments G_i = Σ_p g_log·basis_i: dL/d(coefficient i) of log α = log o − σ
            G = (g_log.reshape(A * K, P) @ basis.T).view(A, K, 6)
            g0, g1, g2, g3, g4, g5 = G.unbind(-1)
            mu, mv = _local_means(means2d_p, step, plan)
            con = conics_p[step.gid]
            a, b, c = con[..., 0], con[..., 1], con[..., 2]
            du = mu * g5 - g3  # Σ g_log·(mu − u)
            dv = mv * g5 - g4
            gid = step.gid.reshape(-1)
            g_mean = torch.stack((-(a * du + b * dv), -(c * dv + b * du)), -1)
            g_means.index_add_(0, gid, g_mean.reshape(-1, 2))
            g_con = torch.stack((-0.5 * (mu * mu * g5 - 2 * mu * g3 + g0),
                                 -(mu * mv * g5 - mu * g4 - mv * g3 + g2),
                                 -0.5 * (mv * mv * g5 - 2 * mv * g4 + g1)), -1)
            g_conics.index_add_(0, gid, g_con.reshape(-1, 3))
            g_opac.index_add_(0, gid, (g5 / opac_p[step.gid]).reshape(-1))
            g_colors.index_add_(0, gid, torch.bmm(w, g_pix).reshape(-1, col.shape[-1]))
        return g_means[:M], g_conics[:M], g_opac[:M], g_colors[:M], None


def _untile(x: Tensor, B: int, plan: _Plan, width: int, height: int) -> Tensor:
    """[B·tiles, P, D] -> [B, H, W, D]."""
    t, D = plan.tile, x.shape[-1]
    x = x.reshape(B, plan.tiles_y, plan.tiles_x, t, t, D).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, plan.tiles_y * t, plan.tiles_x * t, D)[:, :height, :width]


def rasterize(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
              Ks: Tensor, width: int, height: int, *, z0: float = 0.0, eps2d: float = 0.3,
              tile: int = 16, chunk: int = 64,
              background: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Renders B scenes of N Gaussians each through orthographic cameras.

    means [B, N, 3] world; quats [B, N, 4] (w, x, y, z), any norm; scales [B, N, 3] standard
    deviations in world units; opacities [B, N] in [0, 1]; colors [B, N, D] (D = 3 usually);
    Ks [B, 3, 3]; background [B, D] or None. Pad scenes to a common N with opacity 0.
    Returns rgb [B, H, W, D] and alpha [B, H, W, 1], differentiable in means, quats, scales,
    opacities, colors and background (and Ks through the projection).
    `tile` and `chunk` change only speed and memory, never the image."""
    B, N = means.shape[:2]
    if colors.dim() != 3 or colors.shape[:2] != (B, N):
        raise ValueError(f"colors must be [B, N, D], got {tuple(colors.shape)}")
    if tile < 1 or chunk < 1:
        raise ValueError("tile and chunk must be positive")
    proj = project(means, quats, scales, opacities, Ks, width, height, z0=z0, eps2d=eps2d)
    plan = _bin(proj, width, height, tile, chunk)
    flat = (proj.means2d.reshape(B * N, 2), proj.conics.reshape(B * N, 3),
            opacities.reshape(B * N), colors.reshape(B * N, colors.shape[-1]))
    if torch.is_grad_enabled() and any(x.requires_grad for x in flat):
        acc, trans = _Composite.apply(*flat, plan)
    else:  # inference: nothing is kept for a backward pass
        with torch.no_grad():
            acc, trans = _composite(*_padded(*flat), plan, None)
    rgb = _untile(acc, B, plan, width, height)
    t_final = _untile(trans[..., None], B, plan, width, height)
    if background is not None:
        rgb = rgb + t_final * background[:, None, None, :]
    return rgb, 1.0 - t_final
