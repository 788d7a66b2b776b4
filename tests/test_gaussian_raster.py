"""The gaussian backend's renderers and losses on CPU (spec gaussian.md §3.5, §3.7, §4.1): the
pure-torch tile rasterizer against closed forms and against a brute-force per-pixel reference
written here (gsplat's classic ortho semantics), its hand-written backward against gradcheck
and autograd, tile/chunk/batch invariance, culling, speed; the gsplat wrapper's refusal on a
machine without CUDA; SSIM and PSNR."""

from __future__ import annotations

import inspect
import math
import time

import numpy as np
import pytest

try:
    import torch
except ImportError as e:  # no silent skip (spec §4.2): the `test` extra installs torch
    raise ImportError("tests/test_gaussian_raster.py needs torch: pip install -e '.[test]'") from e

from engines.gaussian import raster_gsplat
from engines.gaussian.losses import d_ssim, psnr, ssim
from engines.gaussian.raster_torch import project, rasterize

F64 = torch.float64
THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _one_thread():
    """The scenes here are tiny: one intra-op thread is fastest, and on a shared, loaded
    machine two OpenMP threads waiting on each other made this file 5x slower."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(THREADS)


# ---------------------------------------------------------------- brute-force reference

def _rotmat(q: torch.Tensor) -> torch.Tensor:
    """(w, x, y, z) -> R = (w² − |v|²)·I + 2·v·vᵀ + 2w·[v]×, written differently from the
    renderer's so that the two check each other."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, v = q[..., :1], q[..., 1:]
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    cross = torch.stack((zero, -z, y, z, zero, -x, -y, x, zero), -1).unflatten(-1, (3, 3))
    eye = torch.eye(3, dtype=q.dtype)
    return ((w * w - (v * v).sum(-1, keepdim=True))[..., None] * eye
            + 2 * v[..., :, None] * v[..., None, :] + 2 * w[..., None] * cross)


def dense_reference(means, quats, scales, opacities, colors, Ks, width, height, *, z0=0.0,
                    eps2d=0.3, background=None):
    """gsplat's per-pixel loop, vectorised over all pixels: every Gaussian against every
    pixel, front to back, no tiles, no culling. Differentiable through autograd."""
    out_rgb, out_alpha = [], []
    ys, xs = torch.meshgrid(torch.arange(height, dtype=means.dtype) + 0.5,
                            torch.arange(width, dtype=means.dtype) + 0.5, indexing="ij")
    pix = torch.stack((xs.reshape(-1), ys.reshape(-1)), -1)  # [HW, 2]
    for b in range(means.shape[0]):
        K = Ks[b]
        J = torch.stack((torch.stack((K[0, 0], 0 * K[0, 0], 0 * K[0, 0])),
                         torch.stack((0 * K[1, 1], K[1, 1], 0 * K[1, 1]))))  # [2, 3]
        R = _rotmat(quats[b])
        cov3 = R @ torch.diag_embed(scales[b] ** 2) @ R.transpose(-1, -2)
        cov2 = J @ cov3 @ J.T + eps2d * torch.eye(2, dtype=means.dtype)
        conic = torch.linalg.inv(cov2)
        mean2 = means[b, :, :2] * torch.stack((K[0, 0], K[1, 1])) + torch.stack((K[0, 2], K[1, 2]))
        order = torch.argsort(means[b, :, 2].detach() + z0, stable=True)
        T = torch.ones(pix.shape[0], dtype=means.dtype)
        done = torch.zeros(pix.shape[0], dtype=torch.bool)
        rgb = torch.zeros(pix.shape[0], colors.shape[-1], dtype=means.dtype)
        for n in order.tolist():
            d = mean2[n] - pix
            sigma = 0.5 * (d @ conic[n] * d).sum(-1)
            alpha = torch.clamp(opacities[b, n] * torch.exp(-sigma), max=0.999)
            skip = (sigma < 0) | (alpha < 1.0 / 255.0) | done
            next_t = T * (1 - alpha)
            stop = ~skip & (next_t <= 1e-4)
            done = done | stop
            use = ~skip & ~stop
            rgb = rgb + torch.where(use, alpha * T, 0.0)[:, None] * colors[b, n]
            T = torch.where(use, next_t, T)
        if background is not None:
            rgb = rgb + T[:, None] * background[b]
        out_rgb.append(rgb.reshape(height, width, -1))
        out_alpha.append((1 - T).reshape(height, width, 1))
    return torch.stack(out_rgb), torch.stack(out_alpha)


def random_scene(n, width, height, *, batch=1, dtype=torch.float32, seed=0, smin=0.8, smax=3.0,
                 omin=0.2, omax=0.95, margin=4.0):
    g = torch.Generator().manual_seed(seed)

    def u(*shape):
        return torch.rand(*shape, generator=g, dtype=dtype)

    lo = torch.tensor([-margin, -margin, 0.0], dtype=dtype)
    span = torch.tensor([width + 2 * margin, height + 2 * margin, 20.0], dtype=dtype)
    means = lo + u(batch, n, 3) * span
    quats = torch.randn(batch, n, 4, generator=g, dtype=dtype)
    scales = smin + u(batch, n, 3) * (smax - smin)
    opac = omin + u(batch, n) * (omax - omin)
    colors = u(batch, n, 3)
    Ks = torch.eye(3, dtype=dtype).repeat(batch, 1, 1)
    return means, quats, scales, opac, colors, Ks


def ident_K(batch=1, dtype=torch.float32, fx=1.0, fy=1.0, cx=0.0, cy=0.0):
    K = torch.tensor([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=dtype)
    return K.repeat(batch, 1, 1)


def one(mean, scale, opacity, color=(1.0, 1.0, 1.0), quat=(1.0, 0, 0, 0), dtype=torch.float32):
    t = lambda x: torch.tensor(x, dtype=dtype)[None, None]  # noqa: E731
    return t(mean), t(quat), t(scale), torch.tensor([[opacity]], dtype=dtype), t(color)


# ---------------------------------------------------------------- closed forms

def test_single_isotropic_gaussian_matches_the_closed_form():
    m, q, s, o, c = one((16.5, 12.5, 5.0), (2.0, 2.0, 2.0), 0.5)
    rgb, alpha = rasterize(m, q, s, o, c, ident_K(), 33, 27)
    ys, xs = np.mgrid[0:27, 0:33] + 0.5
    r2 = (xs - 16.5) ** 2 + (ys - 12.5) ** 2
    want = 0.5 * np.exp(-r2 / (2 * (4.0 + 0.3)))  # gsplat's eps2d convention
    want[want < 1 / 255] = 0.0
    got = alpha[0, ..., 0].numpy()
    assert np.abs(got - want).max() < 1e-5
    assert (got[want == 0] == 0).all() and (got[want > 0] > 0).all()  # the 1/255 cut, exactly
    assert np.abs(rgb[0].numpy() - want[..., None]).max() < 1e-5


def _closed_form_anisotropic(fx, fy, cx, cy, mean, axis, angle, scale, eps2d):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    Kx = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    R = np.eye(3) + math.sin(angle) * Kx + (1 - math.cos(angle)) * Kx @ Kx  # Rodrigues
    cov = R @ np.diag(np.square(scale)) @ R.T
    J = np.array([[fx, 0, 0], [0, fy, 0]])
    cov2 = J @ cov @ J.T + eps2d * np.eye(2)
    mu = np.array([fx * mean[0] + cx, fy * mean[1] + cy])
    quat = (math.cos(angle / 2), *(math.sin(angle / 2) * axis))
    return mu, np.linalg.inv(cov2), quat


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (F64, 1e-12)])
def test_rotated_anisotropic_gaussian_and_intrinsics_match_the_closed_form(dtype, tol):
    fx, fy, cx, cy = 1.5, 0.8, -20.0, 6.0
    mean, scale = (30.0, 20.0, 3.0), (5.0, 1.5, 3.0)
    mu, conic, quat = _closed_form_anisotropic(fx, fy, cx, cy, mean, (0.3, 0.4, 1.0), 0.9, scale,
                                               0.3)
    m, q, s, o, c = one(mean, scale, 0.8, quat=quat, dtype=dtype)
    rgb, alpha = rasterize(m, q, s, o, c, ident_K(dtype=dtype, fx=fx, fy=fy, cx=cx, cy=cy), 48, 40)
    ys, xs = np.mgrid[0:40, 0:48] + 0.5
    d = np.stack((xs - mu[0], ys - mu[1]), -1)
    want = 0.8 * np.exp(-0.5 * np.einsum("...i,ij,...j->...", d, conic, d))
    want[want < 1 / 255] = 0.0
    assert (want > 0).sum() > 200  # the ellipse spans several 16-px tiles
    assert np.abs(alpha[0, ..., 0].numpy() - want).max() < tol


def test_eps2d_is_added_to_the_projected_covariance():
    m, q, s, o, c = one((8.5, 8.5, 1.0), (0.1, 0.1, 0.1), 0.9)
    for eps in (0.0, 0.3, 1.0):
        _, alpha = rasterize(m, q, s, o, c, ident_K(), 17, 17, eps2d=eps)
        var = 0.01 + eps
        want = 0.9 * math.exp(-1.0 / (2 * var))  # one pixel right of the centre
        want = want if want >= 1 / 255 else 0.0
        assert abs(float(alpha[0, 8, 9, 0]) - want) < 1e-6
        assert abs(float(alpha[0, 8, 8, 0]) - 0.9) < 1e-6


def test_background_fills_what_the_gaussians_leave():
    m, q, s, o, c = one((10.0, 10.0, 1.0), (2.0, 2.0, 2.0), 0.7, color=(1.0, 0.0, 0.0))
    bg = torch.tensor([[0.1, 0.5, 0.9]])
    rgb0, a0 = rasterize(m, q, s, o, c, ident_K(), 40, 24)
    rgb, a = rasterize(m, q, s, o, c, ident_K(), 40, 24, background=bg)
    assert torch.equal(a, a0)
    assert torch.allclose(rgb, rgb0 + (1 - a0) * bg[:, None, None], atol=1e-7)
    assert torch.equal(rgb[0, 20, 35], bg[0])  # far from the splat: exactly the background


# ---------------------------------------------------------------- order, occlusion, early stop

def test_the_nearer_opaque_gaussian_wins_whatever_the_input_order():
    red = one((12.0, 12.0, 1.0), (20.0, 20.0, 1.0), 1.0, color=(1.0, 0.0, 0.0))
    blue = one((13.0, 11.0, 5.0), (20.0, 20.0, 1.0), 1.0, color=(0.0, 0.0, 1.0))
    cat = lambda a, b: [torch.cat(x, 1) for x in zip(a, b)]  # noqa: E731
    rgb_rb, _ = rasterize(*cat(red, blue), ident_K(), 24, 24)
    rgb_br, _ = rasterize(*cat(blue, red), ident_K(), 24, 24)
    assert torch.equal(rgb_rb, rgb_br)
    centre = rgb_rb[0, 12, 12]
    assert centre[0] > 0.99 and centre[2] < 0.01
    # move blue in front: now it wins
    blue_front = list(blue)
    blue_front[0] = blue[0] * torch.tensor([1.0, 1.0, 0.0]) - torch.tensor([0.0, 0.0, 3.0])
    rgb, _ = rasterize(*cat(red, blue_front), ident_K(), 24, 24)
    assert rgb[0, 12, 12, 2] > 0.99 and rgb[0, 12, 12, 0] < 0.01


def test_compositing_stops_before_transmittance_drops_to_1e4():
    n = 10
    means = torch.tensor([[8.5, 8.5, float(i)] for i in range(n)])[None]
    colors = torch.eye(3).repeat(4, 1)[:n][None]  # r, g, b, r, ...
    ones = torch.ones(1, n, 3)
    quats = torch.tensor([1.0, 0, 0, 0]).repeat(1, n, 1)
    rgb, alpha = rasterize(means, quats, 50 * ones, torch.ones(1, n), colors, ident_K(), 17, 17)
    # the first has α = 0.999 (T -> 1e-3); the second would take T to 1e-6 <= 1e-4: it and
    # everything behind it are excluded (gsplat's rule), so the centre is the first's colour
    assert torch.allclose(rgb[0, 8, 8], torch.tensor([0.999, 0.0, 0.0]), atol=1e-6)
    assert abs(float(alpha[0, 8, 8, 0]) - 0.999) < 1e-6
    ref_rgb, ref_alpha = dense_reference(means, quats, 50 * ones, torch.ones(1, n), colors,
                                         ident_K(), 17, 17)
    assert (rgb - ref_rgb).abs().max() < 1e-5 and (alpha - ref_alpha).abs().max() < 1e-5


# ---------------------------------------------------------------- against the dense reference

@pytest.mark.parametrize("tile,chunk", [(16, 64), (8, 4), (5, 3), (32, 1), (16, 7)])
def test_tiles_and_chunks_give_the_dense_reference_image(tile, chunk):
    scene = random_scene(120, 45, 38, dtype=F64, seed=1, smin=0.5, smax=4.0)
    ref_rgb, ref_a = dense_reference(*scene, 45, 38)
    rgb, a = rasterize(*scene, 45, 38, tile=tile, chunk=chunk)
    assert rgb.shape == (1, 38, 45, 3) and a.shape == (1, 38, 45, 1)
    assert (rgb - ref_rgb).abs().max() < 1e-10 and (a - ref_a).abs().max() < 1e-10
    f32 = [x.float() for x in scene]
    rgb32, a32 = rasterize(*f32, 45, 38, tile=tile, chunk=chunk)
    assert (rgb32 - ref_rgb).abs().max() < 2e-5 and (a32 - ref_a).abs().max() < 2e-5


def test_a_gaussian_straddling_four_tiles_and_a_crowded_tile():
    # one Gaussian centred on the corner shared by four 16-px tiles
    m, q, s, o, c = one((16.0, 16.0, 1.0), (3.0, 2.0, 1.0), 0.9, quat=(0.9, 0.0, 0.0, 0.4),
                        dtype=F64)
    ref = dense_reference(m, q, s, o, c, ident_K(dtype=F64), 32, 32)
    got = rasterize(m, q, s, o, c, ident_K(dtype=F64), 32, 32)
    assert (got[0] - ref[0]).abs().max() < 1e-12
    assert (ref[1][0, 14:18, 14:18] > 0.5).all()  # it really lights all four tiles
    # 200 small Gaussians inside one tile, 8 per chunk: 25 chunks carry T between them
    g = torch.Generator().manual_seed(3)
    n = 200
    means = torch.cat((4 + 8 * torch.rand(1, n, 2, generator=g, dtype=F64),
                       torch.rand(1, n, 1, generator=g, dtype=F64)), -1)
    scene = (means, torch.randn(1, n, 4, generator=g, dtype=F64),
             0.5 + torch.rand(1, n, 3, generator=g, dtype=F64),
             0.05 + 0.1 * torch.rand(1, n, generator=g, dtype=F64),
             torch.rand(1, n, 3, generator=g, dtype=F64), ident_K(dtype=F64))
    ref = dense_reference(*scene, 16, 16)
    got = rasterize(*scene, 16, 16, chunk=8)
    assert (got[0] - ref[0]).abs().max() < 1e-12 and (got[1] - ref[1]).abs().max() < 1e-12


def test_tile_size_and_a_shift_across_a_tile_border_do_not_change_the_image():
    scene = random_scene(150, 48, 48, seed=2)
    rgb16, a16 = rasterize(*scene, 48, 48, tile=16)
    rgb8, a8 = rasterize(*scene, 48, 48, tile=8)
    assert (rgb16 - rgb8).abs().max() < 1e-5 and (a16 - a8).abs().max() < 1e-5
    means, quats, scales, opac, colors, Ks = scene
    means = torch.round(means * 256) / 256  # so that the shift below is exact in float32
    rgb16, _ = rasterize(means, quats, scales, opac, colors, Ks, 48, 48, tile=16)
    shifted = means + torch.tensor([16.0, 16.0, 0.0])
    rgb_s, _ = rasterize(shifted, quats, scales, opac, colors, Ks, 64, 64, tile=16)
    # the same tile-relative geometry: identical where both images see everything
    assert (rgb_s[0, 16 + 8:16 + 40, 16 + 8:16 + 40] - rgb16[0, 8:40, 8:40]).abs().max() < 1e-6


def test_batch_equals_a_loop_with_zero_opacity_padding():
    scenes = [random_scene(n, 40, 30, seed=10 + i) for i, n in enumerate((30, 50, 41))]
    N = 50
    padded = []
    for sc in scenes:  # pad to a common N with opacity 0, as the backend batches sessions
        extra = N - sc[0].shape[1]
        pad = random_scene(extra, 40, 30, seed=99) if extra else None
        parts = []
        for j in range(5):
            x = sc[j]
            if pad is not None:
                p = pad[j] if j != 3 else torch.zeros(1, extra)
                x = torch.cat((x, p), 1)
            parts.append(x)
        padded.append(parts + [sc[5]])
    batch = [torch.cat([p[j] for p in padded]) for j in range(6)]
    bg = torch.rand(3, 3, generator=torch.Generator().manual_seed(0))
    rgb, a = rasterize(*batch, 40, 30, background=bg)
    for i, sc in enumerate(scenes):
        r1, a1 = rasterize(*sc, 40, 30, background=bg[i:i + 1])
        assert torch.allclose(rgb[i], r1[0], atol=1e-6) and torch.allclose(a[i], a1[0], atol=1e-6)


def test_off_image_gaussians_are_culled():
    scene = random_scene(40, 32, 32, seed=4)
    means, quats, scales, opac, colors, Ks = scene
    off = torch.tensor([[[-30.0, 10.0, 1.0], [100.0, 10.0, 1.0], [10.0, -25.0, 1.0],
                         [10.0, 70.0, 1.0], [-1.0, 16.0, 1.0]]])  # the last overlaps the edge
    n = off.shape[1]
    big = lambda x: torch.cat((x[0], x[1]), 1)  # noqa: E731
    all_ = (big((means, off)), big((quats, torch.tensor([1.0, 0, 0, 0]).repeat(1, n, 1))),
            big((scales, torch.full((1, n, 3), 2.0))), big((opac, torch.full((1, n), 0.9))),
            big((colors, torch.ones(1, n, 3))), Ks)
    proj = project(all_[0], all_[1], all_[2], all_[3], Ks, 32, 32)
    assert (proj.radii[0, 40:44] == 0).all() and (proj.radii[0, 44] > 0).all()
    low = project(means, quats, scales, torch.full_like(opac, 1 / 300), Ks, 32, 32)
    assert (low.radii == 0).all()  # opacity below 1/255 can never reach the 1/255 cut
    rgb_all, a_all = rasterize(*all_, 32, 32)
    kept = [torch.cat((x[:, :40], x[:, 44:]), 1) for x in all_[:5]] + [Ks]
    rgb_kept, a_kept = rasterize(*kept, 32, 32)
    assert torch.equal(rgb_all, rgb_kept) and torch.equal(a_all, a_kept)
    assert a_all[0, 16, 0, 0] > 0.5  # the straddling one is drawn


# ---------------------------------------------------------------- gradients

def test_gradcheck_on_a_tiny_scene():
    g = torch.Generator().manual_seed(5)
    n = 6
    means = torch.cat((2 + 12 * torch.rand(1, n, 2, generator=g, dtype=F64),
                       torch.rand(1, n, 1, generator=g, dtype=F64) * 5), -1)
    quats = torch.randn(1, n, 4, generator=g, dtype=F64)
    # large, half-transparent splats: α stays well inside (1/255, 0.999) on the whole image
    # and T never nears 1e-4, so the function is smooth where gradcheck probes it
    scales = 5 + 2 * torch.rand(1, n, 3, generator=g, dtype=F64)
    opac = 0.3 + 0.4 * torch.rand(1, n, generator=g, dtype=F64)
    colors = torch.rand(1, n, 3, generator=g, dtype=F64)
    bg = torch.rand(1, 3, generator=g, dtype=F64)
    Ks = ident_K(dtype=F64)
    inputs = [x.requires_grad_() for x in (means, quats, scales, opac, colors, bg)]
    # WHY the projection: gradcheck builds the full Jacobian, one backward per output; four
    # random pixel weightings check every input's gradient at 1/256 of the cost
    proj = torch.randn(16 * 16 * 4, 4, generator=g, dtype=F64)

    def f(m, q, s, o, c, b):  # several tiles and chunks: the carried T is exercised too
        rgb, a = rasterize(m, q, s, o, c, Ks, 16, 16, tile=8, chunk=4, background=b)
        return torch.cat((rgb, a), -1).reshape(-1) @ proj

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_backward_matches_autograd_of_the_dense_reference():
    # a scene with everything: opaque splats (0.999 clamp, early stop), faint ones (1/255 cut),
    # culled ones, several tiles and chunks. The masks are the same on both sides, so the
    # gradients must agree (in float64) almost everywhere
    scene = random_scene(60, 30, 26, dtype=F64, seed=6, omin=0.05, omax=1.0, smin=0.7, smax=3.0)
    scene[3][0, :8] = 1.0
    leaves = [x.clone().requires_grad_() for x in scene[:5]]
    w = torch.rand(1, 26, 30, 4, generator=torch.Generator().manual_seed(7), dtype=F64)

    def loss(fn):
        rgb, a = fn(*leaves, scene[5], 30, 26)
        return (torch.cat((rgb, a), -1) * w).sum()

    grads_ref = torch.autograd.grad(loss(dense_reference), leaves)
    grads = torch.autograd.grad(loss(lambda *a: rasterize(*a, tile=8, chunk=5)), leaves)
    for name, g_ref, g in zip(("means", "quats", "scales", "opacities", "colors"), grads_ref,
                              grads):
        assert torch.allclose(g, g_ref, atol=1e-9, rtol=1e-7), name


# ---------------------------------------------------------------- speed

def test_speed_96px_3000_gaussians_forward_backward(capsys):
    torch.manual_seed(0)
    n, size = 3000, 96
    means = torch.rand(1, n, 3) * torch.tensor([size, size, 10.0])
    quats = torch.randn(1, n, 4)
    scales = 0.6 + 0.9 * torch.rand(1, n, 3)  # 3.33·√(s² + 0.3): box radii of 2.6-5.3 px
    opac = 0.5 + 0.4 * torch.rand(1, n)
    colors = torch.rand(1, n, 3)
    Ks = ident_K()
    leaves = [x.requires_grad_() for x in (means, quats, scales, opac, colors)]
    radii = project(means, quats, scales, opac, Ks, size, size).radii.float()
    results = {}
    # WHY one thread too: on a shared, loaded CI machine two OpenMP threads can wait on each
    # other far longer than one thread works; the best of both is this code's speed
    for n_threads, tile, chunk in ((THREADS, 16, 64), (1, 16, 64), (1, 8, 32)):
        best_f = best_b = math.inf
        torch.set_num_threads(n_threads)
        for _ in range(2):  # the best of two: the first pays for warm-up
            t0 = time.perf_counter()
            rgb, a = rasterize(*leaves, Ks, size, size, tile=tile, chunk=chunk)
            t1 = time.perf_counter()
            (rgb.sum() + a.sum()).backward()
            t2 = time.perf_counter()
            best_f, best_b = min(best_f, t1 - t0), min(best_b, t2 - t1)
        results[(n_threads, tile, chunk)] = (best_f, best_b)
    with capsys.disabled():
        print(f"\n[gaussian raster] 96x96, 3000 Gaussians (mean box radius "
              f"{radii[radii > 0].mean():.1f} px):")
        for (n_threads, tile, chunk), (f, b) in results.items():
            print(f"  {n_threads} thread(s), tile {tile}, chunk {chunk}: forward {f * 1e3:.0f} ms"
                  f" + backward {b * 1e3:.0f} ms")
    # the spec estimates 30-60 ms on two cores; a shared CI core can be several times slower,
    # so only an absurd regression fails
    assert min(sum(results[(THREADS, 16, 64)]), sum(results[(1, 16, 64)])) < 3.0


# ---------------------------------------------------------------- gsplat wrapper

def test_gsplat_wrapper_has_the_same_call_and_refuses_clearly_here():
    assert inspect.signature(raster_gsplat.rasterize) == inspect.signature(rasterize)
    reason = raster_gsplat.gsplat_unavailable()
    if torch.cuda.is_available() and reason is None:
        pytest.skip("gsplat works here: parity is the GPU check's job (spec §4.3)")
    assert isinstance(reason, str) and reason
    with pytest.raises(RuntimeError, match="gsplat|CUDA"):
        raster_gsplat.rasterize(*random_scene(3, 8, 8), 8, 8)


# ---------------------------------------------------------------- losses

def test_ssim_of_equal_images_is_one_and_falls_with_noise():
    g = torch.Generator().manual_seed(8)
    x = torch.rand(2, 40, 36, 3, generator=g)
    assert abs(float(ssim(x, x)) - 1.0) < 1e-6 and abs(float(d_ssim(x, x))) < 1e-6
    noise = torch.randn(x.shape, generator=g)
    values = [float(ssim(x, (x + s * noise).clamp(0, 1))) for s in (0.02, 0.1, 0.3)]
    assert 1.0 > values[0] > values[1] > values[2]
    y = (x + 0.1 * noise).clamp(0, 1)
    assert abs(float(d_ssim(x, y)) - (1 - float(ssim(x, y)))) < 1e-7
    assert abs(float(ssim(x, y)) - float(ssim(y, x))) < 1e-6  # symmetric


def test_ssim_of_flat_images_has_the_closed_form():
    a, b = torch.full((1, 16, 16, 3), 0.2), torch.full((1, 16, 16, 3), 0.6)
    c1 = 0.01 ** 2
    want = (2 * 0.2 * 0.6 + c1) / (0.2 ** 2 + 0.6 ** 2 + c1)  # the structure term is 1
    assert abs(float(ssim(a, b)) - want) < 1e-6
    x = torch.rand(1, 16, 16, 3, requires_grad=True)
    d_ssim(x, a).backward()  # differentiable
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        ssim(torch.zeros(1, 8, 8, 3), torch.zeros(1, 8, 8, 3))


def test_psnr_known_values_and_mask():
    a = torch.zeros(2, 8, 8, 3)
    assert abs(float(psnr(a, a + 0.1)) - 20.0) < 1e-4  # mse 0.01
    assert abs(float(psnr(a, a + 0.01)) - 40.0) < 1e-3
    assert math.isinf(float(psnr(a, a)))
    b = a.clone()
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, :4] = True
    b[:, :4] = 0.1  # error 0.1 inside the mask
    b[:, 4:] = 0.5  # a large error outside it, ignored
    assert abs(float(psnr(a, b, mask)) - 20.0) < 1e-4
    assert abs(float(psnr(a, b, mask[..., None].float())) - 20.0) < 1e-4
