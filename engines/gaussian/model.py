"""The Gaussian head (spec ``gaussian.md`` §3.3): 3D Gaussians bound to the triangles of a
person-specific FaceMesh rig, plus a small offset MLP (FlashAvatar-style).

For a drive vector d = [open, width, closure, blink_l, blink_r] and a frame pose
[s, qw, qx, qy, qz, tx, ty, tz] (canonical head units → world = crop pixels at ``res``):

1. face vertices V(d) = V0 + Σ_k φ_k(d)·B_k (``rig.rig_face``), the skirt, mouth and eye patches
   from them (``topology.vertices``);
2. per-triangle frames (centre c, rotation R = [e1 e2 n], scale s) (``topology.triangle_frames``);
3. Gaussian i on triangle b(i): μ = c + s·R·(p + Δp), rotation R·R(r ⊗ Δq), scale s·exp(ℓ + Δℓ),
   opacity sigmoid(o), colour sigmoid(k + Δk), with (Δp, Δq, Δℓ, Δk) = MLP(γ_L(p̄), d), tanh-bounded;
4. the frame pose: μ ← s_f·R_f·μ + t_f, rotation ← R_f·rotation, scale ← s_f·scale.

The result feeds ``raster_torch.rasterize`` (or ``raster_gsplat``) directly: world units are crop
pixels at ``res``, so the camera is K = diag(size/res, size/res, 1) for a size² render (§3.4).
Colour is view-independent (SH degree 0): the camera is fixed and the data monocular.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engines.gaussian import rig
from engines.gaussian.topology import (N_FACE, PART_FACE, PART_MOUTH_LOWER, PART_MOUTH_UPPER, PART_SKIRT,
                                       HeadTopology, triangle_frames, vertices)

# §3.3 counts: full scale 14k face / 4k skirt / 2k mouth of 20k (the tiny table's 2k/700/300 is
# the same split, rounded differently); the eye patches count as face (they are part 0)
PART_SHARE = {"face": 0.70, "skirt": 0.20, "mouth": 0.10}
OPACITY_INIT = {"face": 0.9, "skirt": 0.5, "mouth": 0.9}
MOUTH_DARK = (0.15, 0.05, 0.05)  # §3.3: the interior starts dark where frame 0's mouth is closed
SCALE_INIT = 0.7  # in-plane std = 0.7·sqrt(area per Gaussian); the normal axis a tenth of that
# tanh bounds of the MLP's outputs (§3.3): Δp in triangle units, Δq's vector part, Δℓ, Δk logits
BOUND = {"dp": 0.5, "dq": 0.2, "dl": 0.5, "dk": 0.5}
OUT_DIMS = {"dp": 3, "dq": 3, "dl": 3, "dk": 3}
DRIVE_DIM = len(rig.DRIVE)


@dataclass(frozen=True)
class HeadConfig:
    """What fixes the head's tensors (stored as the checkpoint's config JSON, §3.8)."""

    res: int = 512
    n_gaussians: int = 20000
    pe_freqs: int = 8
    mlp: tuple[int, ...] = (256, 256, 256, 256, 256)  # hidden widths
    outputs: tuple[str, ...] = ("dp", "dq", "dl", "dk")
    eps2d: float = 0.3
    seed: int = 0

    @property
    def z0(self) -> float:
        """Depth offset: 10 × the crop side in world units (§3.4), so every depth is positive."""
        return 10.0 * self.res

    @classmethod
    def full(cls) -> "HeadConfig":
        return cls()

    @classmethod
    def tiny(cls) -> "HeadConfig":
        """§3.3 tiny scale: 96², 3k Gaussians, L = 4, MLP 3×64."""
        return cls(res=96, n_gaussians=3000, pe_freqs=4, mlp=(64, 64, 64))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["mlp"], d["outputs"], d["z0"] = list(self.mlp), list(self.outputs), self.z0
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "HeadConfig":
        names = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in names}
        kw["mlp"], kw["outputs"] = tuple(kw.get("mlp", ())), tuple(kw.get("outputs", ()))
        return cls(**kw)


# --------------------------------------------------------------------------- rotation helpers

def quat_mul(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a ⊗ b of wxyz quaternions (…, 4)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack((aw * bw - ax * bx - ay * by - az * bz,
                        aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx,
                        aw * bz + ax * by - ay * bx + az * bw), -1)


def matrix_to_quat(m: Tensor) -> Tensor:
    """Rotation matrices (…, 3, 3) → wxyz quaternions (…, 4), differentiable (Shepperd: of the
    four algebraically equal candidates take the one with the largest, best-conditioned divisor)."""
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    q_abs = torch.sqrt(torch.stack((1 + m00 + m11 + m22, 1 + m00 - m11 - m22,
                                    1 - m00 + m11 - m22, 1 - m00 - m11 + m22), -1).clamp(min=1e-8))
    cand = torch.stack((
        torch.stack((q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01), -1),
        torch.stack((m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20), -1),
        torch.stack((m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21), -1),
        torch.stack((m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2), -1),
    ), -2) / (2.0 * q_abs.clamp(min=0.1))[..., None]
    best = q_abs.argmax(-1)
    q = torch.gather(cand, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    return F.normalize(q, dim=-1)


def positional_encoding(x: Tensor, freqs: int) -> Tensor:
    """NeRF's γ_L: [x, sin(2^k π x), cos(2^k π x)] for k < L, (…, 3) → (…, 3 + 6L)."""
    if freqs <= 0:
        return x
    scales = (2.0 ** torch.arange(freqs, dtype=x.dtype, device=x.device)) * math.pi
    xs = (x[..., None, :] * scales[:, None]).flatten(-2)
    return torch.cat((x, torch.sin(xs), torch.cos(xs)), -1)


# --------------------------------------------------------------------------- initialisation

def _allocate(areas: np.ndarray, total: int) -> np.ndarray:
    """Counts ∝ area with at least one per triangle, summing to ``total`` (largest remainder)."""
    n = len(areas)
    if total < n:
        raise ValueError(f"{total} Gaussians cannot cover {n} triangles (at least one each)")
    share = areas / max(areas.sum(), 1e-12) * (total - n)
    counts = np.floor(share).astype(np.int64)
    left = total - n - int(counts.sum())
    counts[np.argsort(-(share - counts), kind="stable")[:left]] += 1
    return counts + 1


def _part_name(part: int) -> str:
    return {PART_FACE: "face", PART_SKIRT: "skirt", PART_MOUTH_UPPER: "mouth", PART_MOUTH_LOWER: "mouth"}[int(part)]


def gaussian_counts(topology: HeadTopology, n_gaussians: int) -> np.ndarray:
    """(T,) Gaussians per triangle: the §3.3 split between face, skirt and mouth, then ∝ canonical
    area within each part, at least 1 each."""
    v, f = topology.v0.astype(np.float64), topology.faces
    areas = 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    names = np.array([_part_name(p) for p in topology.part])
    budget = {k: int(round(share * n_gaussians)) for k, share in PART_SHARE.items()}
    budget["face"] = n_gaussians - budget["skirt"] - budget["mouth"]
    counts = np.zeros(len(f), np.int64)
    for name, n in budget.items():
        sel = names == name
        counts[sel] = _allocate(areas[sel], n)
    return counts


def _bilinear(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Samples an (H, W, 3) float image at world points (pixel i covers [i, i+1), centre i + 0.5)."""
    h, w = image.shape[:2]
    x = np.clip(xy[:, 0] - 0.5, 0, w - 1.001)
    y = np.clip(xy[:, 1] - 0.5, 0, h - 1.001)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    return ((1 - fx) * (1 - fy) * image[y0, x0] + fx * (1 - fy) * image[y0, x0 + 1]
            + (1 - fx) * fy * image[y0 + 1, x0] + fx * fy * image[y0 + 1, x0 + 1])


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 0.02, 0.98)
    return np.log(p / (1 - p))


def initial_tensors(topology: HeadTopology, config: HeadConfig, crop0: np.ndarray, pose0: np.ndarray,
                    landmarks0: np.ndarray) -> dict[str, np.ndarray]:
    """The per-Gaussian tensors at initialisation (§3.3), as named float32/int32 arrays.

    ``crop0`` (res, res, 3) uint8, ``pose0`` (8,) and ``landmarks0`` (478, 3) world: the frame
    whose colours the Gaussians start from (frame 0 in the spec)."""
    rng = np.random.default_rng(config.seed)
    v = topology.v0.astype(np.float64)
    faces = topology.faces
    counts = gaussian_counts(topology, config.n_gaussians)
    binding = np.repeat(np.arange(len(faces)), counts)
    centres, rots, scales = triangle_frames(v, faces)
    # uniform samples on each triangle: barycentrics from two uniforms (the square-root trick)
    u1, u2 = rng.random(len(binding)), rng.random(len(binding))
    r1 = np.sqrt(u1)
    bary = np.stack([1 - r1, r1 * (1 - u2), r1 * u2], 1)
    tri = v[faces[binding]]  # (N, 3 vertices, 3)
    canon = (bary[:, :, None] * tri).sum(1)
    c, r, s = centres[binding], rots[binding], scales[binding]
    local = np.einsum("nji,nj->ni", r, canon - c) / s[:, None]  # Rᵀ(x − c)/s: z = 0 (in the plane)
    local[:, 2] = 0.0
    areas = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    sigma = SCALE_INIT * np.sqrt(np.maximum(areas, 1e-12) / counts[binding])
    log_xy = np.log(np.maximum(sigma / s, 1e-6))
    log_scale = np.stack([log_xy, log_xy, log_xy + math.log(0.1)], 1)  # flattened discs
    names = np.array([_part_name(p) for p in topology.part[binding]])
    opacity = np.array([OPACITY_INIT[n] for n in names])

    # colours: project with frame 0's pose and sample its crop (this matters for short schedules)
    world = rig.apply_pose(np.asarray(pose0, np.float64), canon)
    image = crop0.astype(np.float64) / 255.0
    colour = _bilinear(image, world[:, :2])
    # the mouth interior is hidden behind closed lips in frame 0: start it dark wherever its
    # projection falls outside frame 0's inner-lip opening
    mouth = names == "mouth"
    if mouth.any():
        import cv2

        res = crop0.shape[0]
        hole = np.zeros((res, res), np.uint8)
        loop = np.asarray(landmarks0)[topology.mouth_loop, :2] - 0.5
        cv2.fillPoly(hole, [np.round(loop * 16).astype(np.int32)], 1, shift=4)
        px = np.clip(np.floor(world[:, :2]).astype(int), 0, res - 1)
        closed = mouth & (hole[px[:, 1], px[:, 0]] == 0)
        colour[closed] = MOUTH_DARK

    return {
        "gauss.binding": binding.astype(np.int32),
        "gauss.local_pos": local.astype(np.float32),
        "gauss.rot": np.tile(np.array([1.0, 0.0, 0.0, 0.0], np.float32), (len(binding), 1)),
        "gauss.log_scale": log_scale.astype(np.float32),
        "gauss.opacity_logit": _logit(opacity).astype(np.float32),
        "gauss.color_logit": _logit(colour).astype(np.float32),
        "gauss.canon_pos": canon.astype(np.float32),
    }


# --------------------------------------------------------------------------- the module

GAUSS_PARAMS = ("local_pos", "rot", "log_scale", "opacity_logit", "color_logit")


class GaussianHead(nn.Module):
    """Gaussians bound to a FaceMesh rig (§3.3). Build with :meth:`from_prepared` (a new head) or
    :meth:`from_tensors` (a checkpoint, ``checkpoint.load_head``); :meth:`tensors` gives the §3.8
    names back. ``forward(d [B,5], pose [B,8])`` → the ``rasterize`` inputs."""

    def __init__(self, topology: HeadTopology, rig_basis: np.ndarray, gauss: Mapping[str, Any],
                 config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        self.topology = topology
        f32 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
        # the rig and mesh as buffers (they move with .to(device)); the topology's index arrays
        # stay numpy: topology.vertices converts them to the input's device
        self.register_buffer("v0", f32(topology.v0), persistent=False)
        self.register_buffer("rig", f32(rig_basis), persistent=False)
        self.register_buffer("binding", torch.as_tensor(np.asarray(gauss["gauss.binding"]), dtype=torch.long), persistent=False)
        self.register_buffer("canon_pos", f32(gauss["gauss.canon_pos"]), persistent=False)
        for name in GAUSS_PARAMS:
            setattr(self, name, nn.Parameter(f32(gauss[f"gauss.{name}"]).clone()))
        unknown = set(config.outputs) - set(OUT_DIMS)
        if unknown:
            raise ValueError(f"unknown MLP outputs {sorted(unknown)} (known: {sorted(OUT_DIMS)})")
        widths = [3 + 6 * config.pe_freqs + DRIVE_DIM, *config.mlp, sum(OUT_DIMS[o] for o in config.outputs)]
        self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        if "mlp.0.weight" in gauss:
            with torch.no_grad():
                for i, layer in enumerate(self.mlp):
                    layer.weight.copy_(f32(gauss[f"mlp.{i}.weight"]))
                    layer.bias.copy_(f32(gauss[f"mlp.{i}.bias"]))
        else:
            # default init from a seeded generator, then the last layer zero: training starts
            # as the pure rig (§3.3)
            gen = torch.Generator().manual_seed(config.seed)
            with torch.no_grad():
                for layer in self.mlp:
                    bound = 1.0 / math.sqrt(layer.in_features)
                    layer.weight.copy_(torch.rand(layer.weight.shape, generator=gen) * 2 * bound - bound)
                    layer.bias.copy_(torch.rand(layer.bias.shape, generator=gen) * 2 * bound - bound)
                self.mlp[-1].weight.zero_()
                self.mlp[-1].bias.zero_()

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_prepared(cls, prepared: Any, config: HeadConfig, frame: int | None = None) -> "GaussianHead":
        """A new head on ``prepared``'s rig, coloured from ``frame`` (default: the first training
        frame, frame 0 of the clip). ``config.res`` must equal the prepared resolution."""
        if int(prepared.res) != config.res:
            raise ValueError(f"the prepared data is at {prepared.res}² but the head config asks for {config.res}²")
        i = int(prepared.train_idx[0]) if frame is None else int(frame)
        gauss = initial_tensors(prepared.topology, config, prepared.crops([i])[0], prepared.pose[i],
                                prepared.landmarks[i])
        return cls(prepared.topology, prepared.rig, gauss, config)

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Any], config: HeadConfig | Mapping[str, Any]) -> "GaussianHead":
        """A head from §3.8 tensors (numpy or torch; ``mesh.*``, ``gauss.*``, ``mlp.*``)."""
        cfg = config if isinstance(config, HeadConfig) else HeadConfig.from_json(config)
        arrays = {k: (v.detach().cpu().numpy() if isinstance(v, Tensor) else np.asarray(v)) for k, v in tensors.items()}
        topology = HeadTopology.from_arrays(arrays, "mesh.")
        return cls(topology, arrays["mesh.rig"], arrays, cfg)

    def tensors(self) -> dict[str, np.ndarray]:
        """All tensors under their §3.8 names (numpy, CPU): mesh.*, gauss.*, mlp.{i}.*."""
        out = {}
        for k, v in self.topology.arrays("mesh.").items():
            # safetensors keeps dtypes: index arrays as int32, the part labels as int8, floats f32
            v = np.asarray(v)
            if k == "mesh.part":
                out[k] = v.astype(np.int8)
            elif np.issubdtype(v.dtype, np.integer) or v.dtype == bool:
                out[k] = v.astype(np.int32)
            else:
                out[k] = v.astype(np.float32)
        out["mesh.rig"] = self.rig.detach().cpu().numpy()
        out["gauss.binding"] = self.binding.cpu().numpy().astype(np.int32)
        out["gauss.canon_pos"] = self.canon_pos.detach().cpu().numpy()
        for name in GAUSS_PARAMS:
            out[f"gauss.{name}"] = getattr(self, name).detach().cpu().numpy()
        for i, layer in enumerate(self.mlp):
            out[f"mlp.{i}.weight"] = layer.weight.detach().cpu().numpy()
            out[f"mlp.{i}.bias"] = layer.bias.detach().cpu().numpy()
        return {k: np.ascontiguousarray(v) for k, v in out.items()}

    @property
    def n_gaussians(self) -> int:
        return int(self.binding.numel())

    def mlp_parameters(self) -> list[nn.Parameter]:
        return list(self.mlp.parameters())

    def gaussian_parameters(self) -> dict[str, nn.Parameter]:
        return {name: getattr(self, name) for name in GAUSS_PARAMS}

    # ----------------------------------------------------------------- evaluation
    def deltas(self, d: Tensor) -> dict[str, Tensor]:
        """The MLP's bounded offsets for drive vectors d [B, 5]: dict of [B, N, 3] tensors."""
        B, N = d.shape[0], self.n_gaussians
        pe = positional_encoding(self.canon_pos, self.config.pe_freqs)  # [N, 3 + 6L]
        x = torch.cat((pe.expand(B, N, -1), d[:, None, :].expand(B, N, DRIVE_DIM)), -1)
        for layer in self.mlp[:-1]:
            x = F.relu(layer(x))
        x = torch.tanh(self.mlp[-1](x))
        out, i = {}, 0
        for name in self.config.outputs:
            n = OUT_DIMS[name]
            out[name] = BOUND[name] * x[..., i:i + n]
            i += n
        return out

    def mesh(self, d: Tensor) -> Tensor:
        """All rig vertices [B, V, 3] in canonical units at drive vectors d [B, 5]."""
        face = self.v0[:N_FACE] + torch.einsum("bk,kvc->bvc", rig.rig_features(d), self.rig)
        return vertices(face, self.topology)

    def forward(self, d: Tensor, pose: Tensor, *, with_deltas: bool = False) -> dict[str, Tensor]:
        """Gaussians in world space for drive vectors d [B, 5] and poses [B, 8]: means [B,N,3],
        quats [B,N,4] wxyz, scales [B,N,3], opacities [B,N], colors [B,N,3] (``rasterize``'s
        inputs). ``with_deltas`` adds the MLP offsets and the local positions (for regularisers)."""
        d = d.to(self.v0.dtype)
        pose = pose.to(self.v0.dtype)
        B = d.shape[0]
        centres, rots, scales = triangle_frames(self.mesh(d), self.topology.faces)  # [B,T,3], [B,T,3,3], [B,T]
        c, r, s = centres[:, self.binding], rots[:, self.binding], scales[:, self.binding]
        delta = self.deltas(d)
        zeros = torch.zeros_like(c)
        local = self.local_pos + delta.get("dp", zeros)
        mu = c + s[..., None] * (r @ local[..., None]).squeeze(-1)
        q_local = self.rot.expand(B, -1, -1)
        if "dq" in delta:
            one = torch.ones_like(delta["dq"][..., :1])
            q_local = quat_mul(q_local, F.normalize(torch.cat((one, delta["dq"]), -1), dim=-1))
        log_scale = self.log_scale + delta.get("dl", zeros)
        color = torch.sigmoid(self.color_logit + delta.get("dk", zeros))
        # the frame pose on top; rotations composed as matrices, one conversion to a quaternion
        s_f, r_f, t_f = rig.pose_parts(pose)
        rot_local = rig.quat_to_matrix(q_local)
        rot_world = r_f[:, None] @ r @ rot_local
        out = {
            "means": s_f[:, None, None] * (r_f[:, None] @ mu[..., None]).squeeze(-1) + t_f[:, None],
            "quats": matrix_to_quat(rot_world),
            "scales": (s_f[:, None] * s)[..., None] * torch.exp(log_scale),
            "opacities": torch.sigmoid(self.opacity_logit).expand(B, -1),
            "colors": color,
        }
        if with_deltas:
            out["local"] = local
            out["log_scale_local"] = log_scale
            out.update({f"delta_{k}": v for k, v in delta.items()})
        return out

    def cameras(self, batch: int, size: int | None = None) -> Tensor:
        """Ks [B, 3, 3] for a size² render (default ``res``): world is crop pixels at ``res``."""
        k = (size or self.config.res) / self.config.res
        K = torch.tensor([[k, 0.0, 0.0], [0.0, k, 0.0], [0.0, 0.0, 1.0]], dtype=self.v0.dtype, device=self.v0.device)
        return K.expand(batch, 3, 3)

    def render(self, d: Tensor, pose: Tensor, size: int | None = None, *, rasterize: Any = None,
               background: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(rgb [B, S, S, 3], alpha [B, S, S, 1]) of the head alone at drive d and pose, S = size or res."""
        if rasterize is None:
            from engines.gaussian.raster_torch import rasterize
        g = self(d, pose)
        size = size or self.config.res
        return rasterize(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"],
                         self.cameras(d.shape[0], size), size, size, z0=self.config.z0,
                         eps2d=self.config.eps2d, background=background)
