"""Mesh topology of the Gaussian head (spec ``gaussian.md`` §3.1, §3.3).

* :func:`mediapipe_triangles`: the 852 FaceMesh triangles, parsed with ``ast`` from the installed
  ``mediapipe/python/solutions/face_mesh_connections.py`` (its ``FACEMESH_TESSELATION`` lists the
  2,556 edges in triangle order; the frozenset itself has lost that order). Only prepare needs
  mediapipe: the table is stored in the prepared dataset and the checkpoint.
* :func:`build_topology`: the face (468 vertices) plus two skirt rings outside the face oval
  (144 triangles), the mouth interior (an upper and a lower half-disc, 60 triangles) and two eye
  patches (16-triangle fans behind the eye holes, rigid with the head, part 0).
* :func:`vertices`: all mesh vertices from the (rig-driven) 468 face vertices.
* :func:`triangle_frames`: per-triangle centre, rotation and scale (GaussianAvatars' binding maths,
  re-derived from the paper: arXiv 2312.02069).

Coordinates: x right, y down, z away from the camera (FaceMesh's; smaller z is closer). The camera
looks along +z, so a triangle faces it when its normal has a negative z.

``vertices`` and ``triangle_frames`` take numpy arrays or torch tensors (differentiable in torch);
numpy callers never import torch.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from collections import defaultdict, deque
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

N_FACE = 468
OVAL_LEN, MOUTH_LEN, EYE_LEN = 36, 20, 16
MOUTH_CORNERS_INNER = (78, 308)  # the inner-lip loop splits here into upper and lower halves
LOWER_INNER_LIP = (95, 88, 178, 87, 14, 317, 402, 318, 324)  # corners excluded
CHIN = 152

RING1_SCALE, RING1_BACK, RING1_RIG = 1.15, 0.15, 0.5
RING2_SCALE, RING2_BACK = 1.35, 0.35
MOUTH_INNER = 0.6  # inner ring of the mouth patch, about the mouth centre
MOUTH_MARGIN = 1.1  # the patch is a little wider than the hole: it tucks behind the lips
MOUTH_BACK_LOOP, MOUTH_BACK_INNER = 0.25, 0.35  # eye distances (canonical units) behind the lips
EYE_MARGIN, EYE_BACK = 1.15, 0.03  # eye patches: a little wider than the eye hole, just behind the lids

PART_FACE, PART_SKIRT, PART_MOUTH_UPPER, PART_MOUTH_LOWER = 0, 1, 2, 3


# --------------------------------------------------------------------------- the MediaPipe table

def _connections_source() -> Path:
    spec = importlib.util.find_spec("mediapipe")  # locates the wheel without importing it (slow)
    if spec is None or spec.origin is None:
        raise RuntimeError("mediapipe is not installed: the FaceMesh triangle table comes from its source")
    return Path(spec.origin).parent / "python" / "solutions" / "face_mesh_connections.py"


@functools.lru_cache(maxsize=1)
def _triangles_cached() -> np.ndarray:
    tree = ast.parse(_connections_source().read_text())
    edges = None
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and getattr(node.targets[0], "id", None) == "FACEMESH_TESSELATION"):
            edges = [tuple(ast.literal_eval(e)) for e in node.value.args[0].elts]
    if edges is None or len(edges) % 3:
        raise RuntimeError("FACEMESH_TESSELATION not found (or not in triangle order) in the mediapipe source")
    e = np.asarray(edges, np.int64).reshape(-1, 3, 2)
    # each triple is (a,b),(b,c),(c,a): check it, so a changed file fails loudly
    if not ((e[:, 0, 1] == e[:, 1, 0]) & (e[:, 1, 1] == e[:, 2, 0]) & (e[:, 2, 1] == e[:, 0, 0])).all():
        raise RuntimeError("FACEMESH_TESSELATION is no longer listed in triangle order")
    tri = e[:, :, 0].astype(np.int32)
    tri.setflags(write=False)
    return tri


def mediapipe_triangles() -> np.ndarray:
    """(852, 3) int32: FaceMesh's triangles over vertices 0..467, in the source's order (§3.1)."""
    return _triangles_cached().copy()


# --------------------------------------------------------------------------- mesh utilities

def edge_counts(faces: np.ndarray) -> dict[tuple[int, int], int]:
    """Undirected edge -> number of triangles using it."""
    counts: dict[tuple[int, int], int] = defaultdict(int)
    for a, b, c in np.asarray(faces).tolist():
        for u, v in ((a, b), (b, c), (c, a)):
            counts[(min(u, v), max(u, v))] += 1
    return dict(counts)


def boundary_loops(faces: np.ndarray) -> list[np.ndarray]:
    """The boundary loops of a manifold triangle mesh, longest first (ties: smallest vertex first),
    each as an int32 vertex array in the direction its triangles traverse it."""
    counts = edge_counts(faces)
    nxt: dict[int, int] = {}
    for a, b, c in np.asarray(faces).tolist():
        for u, v in ((a, b), (b, c), (c, a)):
            if counts[(min(u, v), max(u, v))] == 1:
                if u in nxt:
                    raise ValueError(f"vertex {u} is on two boundary edges going out: not a manifold boundary")
                nxt[u] = v
    loops, seen = [], set()
    for start in sorted(nxt):
        if start in seen:
            continue
        loop, v = [], start
        while v not in seen:
            seen.add(v)
            loop.append(v)
            v = nxt[v]
        if v != start:
            raise ValueError("open boundary chain: not a manifold boundary")
        loops.append(np.asarray(loop, np.int32))
    return sorted(loops, key=lambda lp: (-len(lp), int(lp.min())))


def orient_consistently(faces: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Faces re-wound so neighbours traverse shared edges in opposite directions, each connected
    component then flipped so its area-weighted normal faces the camera (−z) on ``verts``.

    WHY topological propagation: a sign test per triangle flips the near-degenerate and edge-on
    triangles (cheek silhouette, a closed mouth) at random."""
    faces = np.asarray(faces, np.int32).copy()
    by_edge: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (a, b, c) in enumerate(faces.tolist()):
        for u, v in ((a, b), (b, c), (c, a)):
            by_edge[(min(u, v), max(u, v))].append(i)
    done = np.zeros(len(faces), bool)
    for seed in range(len(faces)):
        if done[seed]:
            continue
        component, queue = [seed], deque([seed])
        done[seed] = True
        while queue:
            i = queue.popleft()
            a, b, c = faces[i].tolist()
            for u, v in ((a, b), (b, c), (c, a)):
                for j in by_edge[(min(u, v), max(u, v))]:
                    if done[j]:
                        continue
                    x, y, z = faces[j].tolist()
                    if (u, v) in ((x, y), (y, z), (z, x)):  # same direction: j is wound the other way
                        faces[j] = faces[j][[0, 2, 1]]
                    done[j] = True
                    component.append(j)
                    queue.append(j)
        f = faces[component]
        n = np.cross(verts[f[:, 1]] - verts[f[:, 0]], verts[f[:, 2]] - verts[f[:, 0]])
        if n[:, 2].sum() > 0:  # the component faces away from the camera: flip it whole
            faces[component] = f[:, [0, 2, 1]]
    return faces


# --------------------------------------------------------------------------- the head topology

@dataclass
class HeadTopology:
    """The head mesh (§3.3). Vertex order: face 0..467, ring 1, ring 2, upper mouth patch, lower
    mouth patch, eye patches; triangle order: the 852 FaceMesh triangles, skirt, mouth, eyes.
    ``v0`` is the canonical mesh at d = 0 (canonical head units: outer-eye distance 1)."""

    faces: np.ndarray          # (T, 3) int32, all triangles, wound toward the camera
    part: np.ndarray           # (T,) int8: 0 face (and eye patches), 1 skirt, 2 upper mouth, 3 lower mouth
    v0: np.ndarray             # (V, 3) float32, canonical vertices at d = 0
    oval: np.ndarray           # (36,) int32 face-oval loop (face vertex indices)
    mouth_loop: np.ndarray     # (20,) int32 inner-lip loop (face vertex indices)
    ring1: np.ndarray          # (36,) int32 vertex indices; ring1[i] hangs from oval[i]
    ring2: np.ndarray          # (36,) int32 vertex indices; ring2[i] hangs from oval[i]
    mouth: np.ndarray          # (M,) int32 all mouth-patch vertices (upper then lower)
    upper_patch: np.ndarray    # (M/2,) int32 mouth vertices rigid with the head
    lower_patch: np.ndarray    # (M/2,) int32 mouth vertices translated by jaw_weight·t_jaw
    jaw_vertices: np.ndarray   # (J,) int32 face vertices whose mean rig displacement is t_jaw
    jaw_weight: np.ndarray     # (V,) float32 share of t_jaw a vertex follows (lower patch: 1 mid, 0 corners)
    eye_patch: np.ndarray      # (34,) int32 eye-patch vertices (rigid with the head)
    skirt_weight: np.ndarray   # (V,) float32 share of its face vertex's rig displacement a vertex
                               # inherits: 1 face, 0.5 ring 1, 0 ring 2 and the patches
    n_face_vertices: int = N_FACE

    @property
    def n_vertices(self) -> int:
        return int(self.v0.shape[0])

    def arrays(self, prefix: str = "topo.") -> dict[str, np.ndarray]:
        """The fields as named arrays (for an .npz or a safetensors file)."""
        return {prefix + f.name: np.asarray(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_arrays(cls, d: Any, prefix: str = "topo.") -> "HeadTopology":
        kw = {f.name: np.asarray(d[prefix + f.name]) for f in fields(cls)}
        kw["n_face_vertices"] = int(kw["n_face_vertices"])
        return cls(**kw)


def _strip(a: np.ndarray, b: np.ndarray, closed: bool) -> list[tuple[int, int, int]]:
    """Quads between two parallel vertex rows, two triangles each."""
    n = len(a)
    tris = []
    for i in range(n if closed else n - 1):
        j = (i + 1) % n
        tris += [(a[i], a[j], b[j]), (a[i], b[j], b[i])]
    return tris


def build_topology(v0_face: np.ndarray, mouth_shapes: np.ndarray | None = None,
                   faces: np.ndarray | None = None) -> HeadTopology:
    """The head mesh around the canonical face ``v0_face`` (468, 3) at d = 0 (§3.3).

    ``mouth_shapes`` (S, 468, 3): faces the mouth patch must cover (e.g. the rig over the clip's
    range of ``open`` × ``width``; default ``v0_face``). Each patch's outline takes, per lip
    vertex, the most outward position over the shapes (the lower half's relative to the jaw),
    and the lower half is placed for the most open jaw: at smaller openings it slides up behind
    the upper half, hidden by the lips, so the hole stays covered without a gap.
    ``faces``: the 852 FaceMesh triangles (default: parsed from mediapipe; pass the stored table
    where mediapipe is not installed)."""
    v0_face = np.asarray(v0_face, np.float64)[:N_FACE]
    shapes = v0_face[None] if mouth_shapes is None else \
        np.asarray(mouth_shapes, np.float64)[..., :N_FACE, :].reshape(-1, N_FACE, 3)
    mp_faces = mediapipe_triangles() if faces is None else np.asarray(faces, np.int32)
    loops = boundary_loops(mp_faces)
    oval = next(lp for lp in loops if len(lp) == OVAL_LEN)
    mouth_loop = next(lp for lp in loops if len(lp) == MOUTH_LEN and {13, 14} <= set(lp.tolist()))

    verts = [v0_face]
    tris: list[tuple[int, int, int]] = []
    parts: list[int] = []

    # skirt: oval -> ring 1 -> ring 2, pushed out radially in x-y and back in z
    centre = v0_face[oval].mean(axis=0)
    base = N_FACE
    ring1 = np.arange(base, base + OVAL_LEN, dtype=np.int32)
    ring2 = ring1 + OVAL_LEN
    for scale, back in ((RING1_SCALE, RING1_BACK), (RING2_SCALE, RING2_BACK)):
        ring = v0_face[oval].copy()
        ring[:, :2] = centre[:2] + scale * (ring[:, :2] - centre[:2])
        ring[:, 2] += back
        verts.append(ring)
    for a, b in ((oval, ring1), (ring1, ring2)):
        tris += _strip(a, b, closed=True)
    parts += [PART_SKIRT] * (2 * 2 * OVAL_LEN)

    # mouth interior: two half-discs (upper rigid, lower translated by t_jaw), each the lip arc
    # copied, an inner arc at 0.6x, and a centre on the corner-to-corner split line
    jaw = np.asarray(LOWER_INNER_LIP + (CHIN,), np.int32)
    t_jaw = (shapes[:, jaw] - v0_face[jaw]).mean(axis=1)  # (S, 3)
    ref = int(np.argmax(t_jaw[:, 1]))  # the jaw lowest (image y down)
    open_face, t_jaw_open = shapes[ref], t_jaw[ref]
    loop = mouth_loop.tolist()
    i0, i1 = loop.index(MOUTH_CORNERS_INNER[0]), loop.index(MOUTH_CORNERS_INNER[1])
    arc_a = np.roll(mouth_loop, -i0)[: (i1 - i0) % MOUTH_LEN + 1]  # 78 .. 308 one way
    arc_b = np.roll(mouth_loop, -i1)[: (i0 - i1) % MOUTH_LEN + 1]  # 308 .. 78 the other way
    upper_arc, lower_arc = (arc_a, arc_b) if 13 in arc_a.tolist() else (arc_b, arc_a)
    m_centre = open_face[mouth_loop].mean(axis=0)
    n_base = base + 2 * OVAL_LEN
    patches = []
    # the lower half follows the jaw most in the middle and not at the corners (as a lower lip
    # does): a rigid translation opened wedge-shaped gaps at the corners
    x_l, x_r = sorted((open_face[MOUTH_CORNERS_INNER[0], 0], open_face[MOUTH_CORNERS_INNER[1], 0]))
    mid, half = 0.5 * (x_l + x_r), max(0.5 * (x_r - x_l), 1e-6)

    def jaw_share(x: np.ndarray) -> np.ndarray:
        return np.sqrt(np.clip(1.0 - ((x - mid) / half) ** 2, 0.0, 1.0))

    jaw_weights = []
    for arc, part, lower in ((upper_arc, PART_MOUTH_UPPER, False), (lower_arc, PART_MOUTH_LOWER, True)):
        cand = shapes[:, arc]  # (S, k, 3)
        w_arc = jaw_share(open_face[arc, 0])[:, None] if lower else 0.0
        if lower:  # the lower lip seen from the patch, which moves with the jaw
            cand = cand + w_arc * (t_jaw_open - t_jaw[:, None])
        out_dir = open_face[arc, :2] - m_centre[:2]
        out_dir /= np.maximum(np.linalg.norm(out_dir, axis=1, keepdims=True), 1e-9)
        pick = np.argmax(((cand[..., :2] - m_centre[:2]) * out_dir).sum(-1), axis=0)
        lip = cand[pick, np.arange(len(arc))]
        outer = lip.copy()
        outer[:, :2] = m_centre[:2] + MOUTH_MARGIN * (outer[:, :2] - m_centre[:2])
        inner = m_centre + MOUTH_INNER * (outer - m_centre)
        outer[:, 2] = lip[:, 2] + MOUTH_BACK_LOOP
        inner[:, 2] = m_centre[2] + MOUTH_INNER * (lip[:, 2] - m_centre[2]) + MOUTH_BACK_INNER
        c = m_centre + np.array([0.0, 0.0, MOUTH_BACK_INNER])
        block = np.concatenate([outer, inner, c[None]])
        w_block = jaw_share(block[:, 0]) if lower else np.zeros(len(block))
        block -= w_block[:, None] * t_jaw_open  # the lower half at d = 0: jaw closed
        jaw_weights.append(w_block)
        k = len(arc)
        ids_outer = np.arange(n_base, n_base + k, dtype=np.int32)
        ids_inner = ids_outer + k
        id_c = n_base + 2 * k
        new = _strip(ids_outer, ids_inner, closed=False)
        new += [(ids_inner[i], ids_inner[i + 1], id_c) for i in range(k - 1)]
        tris += new
        parts += [part] * len(new)
        verts.append(block)
        patches.append(np.arange(n_base, n_base + 2 * k + 1, dtype=np.int32))
        n_base += 2 * k + 1

    # eye patches: without them the eye holes show whatever is behind the head (a random colour
    # in training, the plate's own eyes when serving); rigid, since gaze is baked to the average
    eye_loops = [lp for lp in loops if len(lp) == EYE_LEN]
    eye_ids = []
    for lp in eye_loops:
        ring = v0_face[lp].copy()
        c = ring.mean(axis=0)
        ring[:, :2] = c[:2] + EYE_MARGIN * (ring[:, :2] - c[:2])
        ring[:, 2] += EYE_BACK
        ids = np.arange(n_base, n_base + EYE_LEN, dtype=np.int32)
        new = [(ids[i], ids[(i + 1) % EYE_LEN], n_base + EYE_LEN) for i in range(EYE_LEN)]
        tris += new
        parts += [PART_FACE] * len(new)
        verts.append(np.concatenate([ring, (c + np.array([0.0, 0.0, EYE_BACK]))[None]]))
        eye_ids.append(np.arange(n_base, n_base + EYE_LEN + 1, dtype=np.int32))
        n_base += EYE_LEN + 1

    v_all = np.concatenate(verts).astype(np.float32)
    all_faces = np.concatenate([mp_faces, np.asarray(tris, np.int32)])
    part_arr = np.concatenate([np.zeros(len(mp_faces), np.int8), np.asarray(parts, np.int8)])
    # wind on the open mesh: at d = 0 the lower patch overlaps the upper one and a closed mouth
    # is a sliver, but the orientation is topological and holds for any d
    shape_open = v_all.astype(np.float64).copy()
    shape_open[:N_FACE] = open_face
    shape_open[patches[1]] += jaw_weights[1][:, None] * t_jaw_open
    all_faces = orient_consistently(all_faces, shape_open)

    weight = np.zeros(len(v_all), np.float32)
    weight[:N_FACE] = 1.0
    weight[ring1] = RING1_RIG
    jaw_w = np.zeros(len(v_all), np.float32)
    jaw_w[patches[1]] = jaw_weights[1]
    return HeadTopology(
        faces=all_faces, part=part_arr, v0=v_all, oval=oval.astype(np.int32),
        mouth_loop=mouth_loop.astype(np.int32), ring1=ring1, ring2=ring2,
        mouth=np.concatenate(patches), upper_patch=patches[0], lower_patch=patches[1],
        jaw_vertices=jaw, skirt_weight=weight, jaw_weight=jaw_w, eye_patch=np.concatenate(eye_ids),
    )


# --------------------------------------------------------------------------- numpy / torch ops

def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _like(a: np.ndarray, ref: Any) -> Any:
    """``a`` as an array of ``ref``'s kind (dtype and device too, for torch)."""
    if _is_torch(ref):
        import torch
        dtype = ref.dtype if np.issubdtype(np.asarray(a).dtype, np.floating) else torch.long
        return torch.as_tensor(np.asarray(a), dtype=dtype, device=ref.device)
    return np.asarray(a, dtype=ref.dtype if np.issubdtype(np.asarray(a).dtype, np.floating) else np.int64)


def _cat(xs: list[Any], axis: int) -> Any:
    if _is_torch(xs[0]):
        import torch
        return torch.cat(xs, dim=axis)
    return np.concatenate(xs, axis=axis)


def _stack(xs: list[Any], axis: int) -> Any:
    if _is_torch(xs[0]):
        import torch
        return torch.stack(xs, dim=axis)
    return np.stack(xs, axis=axis)


def _cross(a: Any, b: Any) -> Any:
    if _is_torch(a):
        import torch
        return torch.linalg.cross(a, b, dim=-1)
    return np.cross(a, b)


def _sum_last(x: Any) -> Any:
    return x.sum(-1, keepdim=True) if _is_torch(x) else x.sum(-1, keepdims=True)


def _normalise(a: Any, eps: float = 1e-12) -> tuple[Any, Any]:
    """(unit vector, length); the length is sqrt(|a|² + eps²), so the gradient stays finite."""
    length = (_sum_last(a * a) + eps * eps) ** 0.5
    return a / length, length[..., 0]


def _float(x: Any) -> Any:
    if _is_torch(x):
        return x if x.is_floating_point() else x.float()
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)


def _mean(x: Any, axis: int) -> Any:
    return x.mean(axis, keepdim=True) if _is_torch(x) else x.mean(axis, keepdims=True)


def _broadcast(x: Any, batch: tuple[int, ...]) -> Any:
    shape = tuple(batch) + tuple(x.shape)
    return x.expand(shape) if _is_torch(x) else np.broadcast_to(x, shape)


def vertices(face_vertices: Any, topology: HeadTopology) -> Any:
    """All mesh vertices (…, V, 3) from the face vertices (…, 468, 3) in canonical units (§3.3).

    Ring 1 inherits half of its oval vertex's rig displacement, ring 2, the upper mouth patch and
    the eye patches are rigid with the head, the lower mouth patch translates by t_jaw = the mean
    rig displacement of the lower inner lip and chin 152 (weighted per vertex by ``jaw_weight``:
    all of it in the middle, none at the corners). Displacements are from ``topology.v0``'s face."""
    fv = _float(face_vertices)
    batch = tuple(fv.shape[:-2])
    v0 = _like(topology.v0, fv)
    disp = fv - v0[:N_FACE]
    ring1 = v0[_like(topology.ring1, fv)] + RING1_RIG * disp[..., _like(topology.oval, fv), :]
    ring2 = _broadcast(v0[_like(topology.ring2, fv)], batch)
    upper = _broadcast(v0[_like(topology.upper_patch, fv)], batch)
    t_jaw = _mean(disp[..., _like(topology.jaw_vertices, fv), :], -2)
    lower_idx = _like(topology.lower_patch, fv)
    lower = v0[lower_idx] + _like(topology.jaw_weight, fv)[lower_idx][:, None] * t_jaw
    eyes = _broadcast(v0[_like(topology.eye_patch, fv)], batch)
    # the order of build_topology: face, ring 1, ring 2, upper patch, lower patch, eye patches
    return _cat([fv, ring1, ring2, upper, lower, eyes], axis=-2)


def triangle_frames(verts: Any, faces: Any) -> tuple[Any, Any, Any]:
    """Per-triangle (centres (…,T,3), rotations (…,T,3,3), scales (…,T)) (§3.3).

    e1 = n̂(v1−v0), n = n̂((v1−v0)×(v2−v0)), e2 = n×e1, R = [e1 e2 n] (columns), s = (|v1−v0| +
    |(v2−v0)·e2|)/2 (edge length plus the triangle's height over it, halved), c = mean vertex.
    With the head's winding n points toward the camera (−z)."""
    verts = _float(verts)
    f = _like(np.asarray(faces), verts)
    a, b, c = verts[..., f[:, 0], :], verts[..., f[:, 1], :], verts[..., f[:, 2], :]
    e01, e02 = b - a, c - a
    e1, length = _normalise(e01)
    n, _ = _normalise(_cross(e01, e02))
    e2 = _cross(n, e1)
    rot = _stack([e1, e2, n], axis=-1)
    height = (e02 * e2).sum(-1)
    height = height.abs() if _is_torch(height) else np.abs(height)
    return (a + b + c) / 3.0, rot, 0.5 * (length + height)


def mesh_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unnormalised triangle normals (v1−v0)×(v2−v0) (twice the area, numpy)."""
    v = np.asarray(verts, np.float64)
    f = np.asarray(faces)
    return np.cross(v[..., f[:, 1], :] - v[..., f[:, 0], :], v[..., f[:, 2], :] - v[..., f[:, 0], :])
