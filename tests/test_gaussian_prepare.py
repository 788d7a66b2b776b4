"""The gaussian backend's enrolment stage A and mesh (spec gaussian.md §3.1-3.3, §4.1 items 7-8).

Real clip: ../shared/corpus/video/AniPortrait_pose_ref_video.mp4 (5.0 s, 512², 25 fps, one
frontal speaker; read in place). prepare() runs once per module at res 96 (tiny), about 5 s.
"""

from __future__ import annotations

from tests.media import corpus_clip as media_clip

import threading
from collections import Counter
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from engines.face import mouth_opening
from engines.gaussian import rig
from engines.gaussian import topology as T
from engines.gaussian.prepare import EnrolError, Prepared, prepare
from engines.mesh.geometry import FACE_OVAL

CLIP_NAME = "AniPortrait_pose_ref_video.mp4"
RES = 96


def corpus_clip(name: str = CLIP_NAME) -> Path:
    return media_clip(name)


@pytest.fixture(scope="module")
def prepared() -> tuple[Prepared, list[tuple[str, float]]]:
    calls: list[tuple[str, float]] = []
    prep = prepare(corpus_clip(), RES, tiny=True, progress=lambda s, f: calls.append((s, f)))
    return prep, calls


def write_video(path: Path, frames: list[np.ndarray], fps: int = 25) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def clip_frames(n: int) -> list[np.ndarray]:
    out = []
    with av.open(str(corpus_clip())) as container:
        for frame in container.decode(video=0):
            out.append(frame.to_ndarray(format="rgb24"))
            if len(out) == n:
                break
    return out


# --------------------------------------------------------------------------- topology

def test_mediapipe_triangle_table() -> None:
    tri = T.mediapipe_triangles()
    assert tri.shape == (852, 3) and tri.dtype == np.int32
    assert np.array_equal(np.unique(tri), np.arange(468))
    edges = T.edge_counts(tri)
    assert len(edges) == 1322 and set(edges.values()) <= {1, 2}
    assert 468 - len(edges) + len(tri) == -2  # Euler characteristic of a sphere with 4 holes
    loops = T.boundary_loops(tri)
    assert [len(lp) for lp in loops] == [36, 20, 16, 16]
    assert set(loops[0].tolist()) == set(FACE_OVAL)
    assert {13, 14} <= set(loops[1].tolist())
    assert {33, 133} <= set(loops[2].tolist()) | set(loops[3].tolist())
    # the source's edge order: each triple is one triangle, so no directed edge repeats
    assert max(Counter(e for a, b, c in tri.tolist() for e in ((a, b), (b, c), (c, a))).values()) == 1


def _face_z(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = T.mesh_normals(verts, faces)
    area = np.linalg.norm(n, axis=-1)
    return n[..., 2] / np.maximum(area, 1e-12), area


def test_head_topology_is_consistently_wound_toward_the_camera(prepared) -> None:
    prep, _ = prepared
    topo = prep.topology
    faces, part = topo.faces, topo.part
    assert np.bincount(part).tolist() == [852 + 32, 144, 30, 30]  # face + eye patches, skirt, mouth halves
    assert topo.n_vertices == 468 + 72 + 46 + 34 and len(topo.v0) == topo.n_vertices
    # the first 852 are FaceMesh's own triangles (winding aside)
    assert {frozenset(f) for f in faces[:852].tolist()} == {frozenset(f) for f in prep.mp_faces.tolist()}
    # consistent: neighbours traverse a shared edge in opposite directions
    directed = Counter(e for a, b, c in faces.tolist() for e in ((a, b), (b, c), (c, a)))
    assert max(directed.values()) == 1
    # canonical mesh at d = 0 and at the clip's widest opening: toward the camera (−z)
    for d in (np.zeros(5), np.array([prep.meta["open_range"][-1], 0, 0, 0, 0])):
        nz, area = _face_z(T.vertices(prep.face_vertices(d), topo), faces)
        assert (nz[part > 0] < -0.1).all(), "a skirt or mouth triangle faces away"
        face = part == 0
        assert area[face][nz[face] > 0].sum() < 1e-3 * area[face].sum()
    # every tracked frame, posed: ≥ 99 % of the (frame, face triangle) pairs face the camera
    nz, _ = _face_z(prep.world_vertices(), faces)
    assert (nz[:, part == 0] < 0).mean() > 0.99
    assert (nz[:, part > 0] < 0).all()


def _uncovered(verts: np.ndarray, tris: np.ndarray, loop: np.ndarray, size: int = 300) -> float:
    """Share of the polygon ``loop`` (x-y) not covered by the triangles ``tris``, rasterised."""
    xy = verts[:, :2]
    lo = xy[loop].min(0)
    scale = (size - 20) / max(float((xy[loop].max(0) - lo).max()), 1e-9)

    def px(p: np.ndarray) -> np.ndarray:
        return np.round(((p - lo) * scale + 10) * 16).astype(np.int32)

    hole = np.zeros((size, size), np.uint8)
    cv2.fillPoly(hole, [px(xy[loop])], 1, shift=4)
    hole = cv2.erode(hole, np.ones((3, 3), np.uint8))  # the outline itself is the lips' edge
    cover = np.zeros_like(hole)
    for f in tris:
        cv2.fillPoly(cover, [px(xy[f])], 1, shift=4)
    return float((hole & (1 - cover)).sum()) / max(int(hole.sum()), 1)


def test_mouth_and_eye_holes_are_covered(prepared) -> None:
    prep, _ = prepared
    topo = prep.topology
    mouth = topo.faces[topo.part >= 2]
    lo, hi = np.percentile(prep.drive[:, :2], [1, 99], axis=0)
    grid = [np.array([o, w, 0, 0, 0]) for o in np.linspace(lo[0], hi[0], 4) for w in np.linspace(lo[1], hi[1], 3)]
    worst = 0.0
    for d in list(prep.drive[::3]) + grid:
        worst = max(worst, _uncovered(T.vertices(prep.face_vertices(d), topo), mouth, topo.mouth_loop))
    assert worst < 0.01, f"the mouth interior leaves {100 * worst:.1f}% of the hole open"
    # the check has teeth: the upper half alone leaves the open mouth's lower part uncovered
    wide = T.vertices(prep.face_vertices(np.array([hi[0], 0, 0, 0, 0])), topo)
    assert _uncovered(wide, topo.faces[topo.part == 2], topo.mouth_loop) > 0.2
    # the lower half slides with the jaw: at d = 0 it sits higher than at the widest opening
    closed = T.vertices(prep.face_vertices(np.zeros(5)), topo)
    assert (wide[topo.lower_patch, 1] - closed[topo.lower_patch, 1]).max() > 0.05
    assert np.allclose(wide[topo.upper_patch], closed[topo.upper_patch])
    eyes = [lp for lp in T.boundary_loops(prep.mp_faces) if len(lp) == 16]
    eye_tris = topo.faces[len(topo.faces) - 32:]
    for d in (np.zeros(5), np.array([0.3, 0, 0, 1, 1])):
        v = T.vertices(prep.face_vertices(d), topo)
        assert max(_uncovered(v, eye_tris, lp) for lp in eyes) < 0.01


def test_vertices_and_triangle_frames_numpy_and_torch(prepared) -> None:
    import torch

    # one known triangle: e1 = x, n = z, e2 = y, s = (|v1−v0| + height)/2
    c, r, s = T.triangle_frames(np.array([[0.0, 0, 0], [2, 0, 0], [0.5, 1, 0]]), np.array([[0, 1, 2]]))
    assert np.allclose(r[0], np.eye(3)) and np.isclose(s[0], 1.5) and np.allclose(c[0], [2.5 / 3, 1 / 3, 0])

    prep, _ = prepared
    topo = prep.topology
    face = prep.face_vertices(prep.drive[:4]).astype(np.float64)  # (4, 468, 3)
    v_np = T.vertices(face, topo)
    c_np, r_np, s_np = T.triangle_frames(v_np, topo.faces)
    assert v_np.shape == (4, topo.n_vertices, 3) and r_np.shape == (4, len(topo.faces), 3, 3)
    assert np.allclose(r_np @ np.swapaxes(r_np, -1, -2), np.eye(3), atol=1e-9)
    assert np.allclose(np.linalg.det(r_np), 1.0)
    assert (r_np[..., 2, 2][:, topo.part > 0] < 0).all()  # the normal column faces the camera
    v_t = T.vertices(torch.tensor(face), topo)
    c_t, r_t, s_t = T.triangle_frames(v_t, topo.faces)
    for a, b in ((v_np, v_t), (c_np, c_t), (r_np, r_t), (s_np, s_t)):
        assert np.allclose(a, b.numpy(), atol=1e-12)
    # differentiable: gradcheck through vertices + frames on a few triangles
    sub = torch.tensor(face[:1], requires_grad=True)

    def f(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        c, r, s = T.triangle_frames(T.vertices(x, topo), topo.faces[[0, 900, 1000, 1040, 1070]])
        return c, r, s

    assert torch.autograd.gradcheck(f, (sub,), eps=1e-6, atol=1e-5)


# --------------------------------------------------------------------------- rig maths

def test_umeyama_recovers_a_similarity() -> None:
    rng = np.random.default_rng(0)
    src = rng.normal(size=(40, 3))
    q = rng.normal(size=4)
    r_true = rig.quat_to_matrix(q / np.linalg.norm(q))
    dst = 2.7 * src @ r_true.T + np.array([5.0, -3.0, 1.0]) + rng.normal(scale=1e-9, size=src.shape)
    s, r, t = rig.umeyama(src, dst)
    assert abs(s - 2.7) < 1e-8 and np.allclose(r, r_true, atol=1e-8) and np.allclose(t, [5, -3, 1], atol=1e-8)
    s1, r1, _ = rig.umeyama(src, dst / 2.7, with_scale=False)
    assert s1 == 1.0 and np.allclose(r1, r_true, atol=1e-8)
    # a mirror image still gives a proper rotation
    _, rm, _ = rig.umeyama(src, src * np.array([-1.0, 1, 1]))
    assert np.isclose(np.linalg.det(rm), 1.0)
    # batched, and the pose helpers agree with it
    sb, rb, tb = rig.umeyama(np.stack([src, src]), np.stack([dst, 2 * dst]))
    assert np.allclose(sb, [2.7, 5.4]) and np.allclose(rb[1], r_true, atol=1e-8)
    pose = rig.poses_from(sb, rb, tb)
    assert np.allclose(rig.apply_pose(pose[:, None], src[None])[:, 0], np.stack([dst, 2 * dst]), atol=1e-7)
    assert np.allclose(rig.pose_matrix(pose)[0, :3, :3], 2.7 * r_true, atol=1e-7)


def test_smooth_poses_keeps_a_steady_track_and_splits_runs() -> None:
    rng = np.random.default_rng(1)
    n = 40
    q = rig.matrix_to_quat(np.repeat(rig.quat_to_matrix(np.array([0.9, 0.1, 0.2, 0.0]))[None], n, 0))
    q[::2] *= -1  # the same rotations with flipped signs must not average to nonsense
    poses = np.concatenate([np.full((n, 1), 3.0), q, np.linspace(0, 10, n)[:, None] * np.ones(3)], 1)
    noisy = poses.copy()
    noisy[:, 5:] += rng.normal(scale=0.1, size=(n, 3))
    idx = np.r_[np.arange(20), np.arange(30, 50)]
    out = rig.smooth_poses(noisy, idx)
    assert np.allclose(np.abs(out[:, 1:5] @ poses[0, 1:5]), 1.0, atol=1e-9)
    assert np.abs(out[:, 5:] - poses[:, 5:]).std() < 0.7 * np.abs(noisy[:, 5:] - poses[:, 5:]).std()


# --------------------------------------------------------------------------- prepare on a real clip

def test_prepare_shapes_split_and_progress(prepared) -> None:
    prep, calls = prepared
    f = prep.n_frames
    assert f == 125 and prep.res == RES and prep.fps == 25.0
    assert prep.crops([0, f - 1]).shape == (2, RES, RES, 3)
    assert prep.plate(0).shape == (512, 512, 3) and len(prep.plate_frames) == f  # 5 s < the 20 s cap
    assert prep.landmarks.shape == (f, 478, 3) and prep.pose.shape == (f, 8) and prep.drive.shape == (f, 5)
    assert prep.v0.shape == (468, 3) and prep.rig.shape == (7, 468, 3) and prep.mp_faces.shape == (852, 3)
    masks = prep.masks(np.arange(0, f, 10))
    assert masks.shape == (13, 3, RES, RES) and 0 <= masks.min() and masks.max() <= 1
    face, region, mouth = (masks[:, i] > 0.5 for i in range(3))
    assert (mouth & ~region).mean() < 1e-3 and (face & ~region).mean() < 0.01 and 0.05 < face.mean() < 0.6
    assert (prep.crop[2] - prep.crop[0]) == (prep.crop[3] - prep.crop[1])
    # split: the last 10 % as one block, every 5th of the rest held out
    tail = prep.tail_idx
    assert len(tail) == 13 and np.array_equal(tail, np.arange(f - 13, f))
    assert np.array_equal(prep.heldout_idx, np.arange(4, f - 13, 5))
    assert len(prep.train_idx) + len(prep.heldout_idx) + len(tail) == f
    # drive vector ranges; closure is 0 in v1
    d = prep.drive
    assert (d[:, 0] >= 0).all() and (d[:, 0] <= 1).all() and (np.abs(d[:, 1]) <= 1).all()
    assert (d[:, 2] == 0).all() and (d[:, 3:] >= 0).all() and (d[:, 3:] <= 1).all()
    assert d[:, 0].std() > 0.1  # she talks
    stages = [s for s, _ in calls]
    assert stages[0] == "track" and stages[-1] == "done" and {"fit", "crops"} <= set(stages)
    assert all(0 <= x <= 1 for _, x in calls)


def test_drive_vector_matches_the_audio_model_targets(prepared) -> None:
    prep, _ = prepared
    lm = prep.landmarks.astype(np.float64)
    opening = np.array([mouth_opening(x) for x in lm])
    assert np.allclose(prep.drive[:, 0], np.clip(opening / 0.35, 0, 1), atol=1e-6)
    w = np.linalg.norm(lm[:, 61, :2] - lm[:, 291, :2], axis=1) / np.linalg.norm(lm[:, 33, :2] - lm[:, 263, :2], axis=1)
    assert np.allclose(prep.drive[:, 1], np.clip((w - np.median(w)) * 8, -1, 1), atol=1e-5)


def test_poses_reproject_the_rig_onto_the_tracked_landmarks(prepared) -> None:
    prep, _ = prepared
    face = prep.face_vertices(prep.drive).astype(np.float64)
    proj = rig.apply_pose(prep.pose.astype(np.float64), face)
    err = np.linalg.norm(proj[..., :2] - prep.landmarks[:, :468, :2], axis=-1).mean(-1)  # px per frame
    eye = np.linalg.norm(prep.landmarks[:, 263, :2] - prep.landmarks[:, 33, :2], axis=1)
    # measured: median 0.28 px = 0.010 eye distances at res 96 (eye distance about 29 px)
    assert np.median(err / eye) < 0.02 and np.percentile(err / eye, 95) < 0.035
    # the canonical frame: eye line along +x, outer-eye distance 1, head upright, facing the camera
    v0 = prep.v0
    assert abs(np.linalg.norm(v0[263] - v0[33]) - 1) < 0.05 and v0[263, 0] > v0[33, 0] and v0[152, 1] > v0[10, 1]
    assert np.abs(rig.yaw_pitch_roll(prep.pose)[:, 0]).max() < 20


def test_rig_opens_the_mouth_downward(prepared) -> None:
    prep, _ = prepared
    b_open = prep.rig[rig.FEATURES.index("open")]
    assert b_open[14, 1] - b_open[13, 1] > 0.1  # lower inner lip moves down relative to the upper
    assert b_open[14, 1] > 0 and b_open[152, 1] > 0  # the lower lip and chin go down (y down)
    openings = [mouth_opening(prep.face_vertices(np.array([o, 0, 0, 0, 0]))) for o in np.linspace(0, 0.6, 5)]
    assert np.all(np.diff(openings) > 0) and openings[0] < 0.05
    aligned = rig.aligned_landmarks(prep.landmarks[:, :468], prep.pose)
    v0, basis, r2 = rig.fit_rig(aligned, prep.drive)
    assert np.allclose(v0, prep.v0, atol=1e-5) and np.allclose(basis, prep.rig, atol=1e-4)
    # measured on this clip: mouth 0.63, lower lip 0.72, jaw 0.20, eyes 0.40, all 0.42
    assert r2["mouth"] > 0.5 and r2["lower_lip"] > 0.5
    assert r2 == pytest.approx(prep.meta["rig_r2"], abs=1e-6)
    # a shuffled drive explains nothing: the R² gate can fail
    _, _, r2_bad = rig.fit_rig(aligned, prep.drive[np.random.default_rng(0).permutation(prep.n_frames)])
    assert r2_bad["mouth"] < 0.2


def test_prepared_round_trips(prepared, tmp_path: Path) -> None:
    prep, _ = prepared
    path = tmp_path / "prepared.npz"
    prep.save(path)
    with np.load(path, allow_pickle=False) as z:  # plain numpy, no pickle: readable on the GPU machine
        assert str(z["format"]) == "lipsync-gaussian-prepared" and "topo.faces" in z.files
    back = Prepared.load(path)
    for name, value in vars(prep).items():
        other = getattr(back, name)
        if name == "topology":
            for k, v in value.arrays().items():
                assert np.array_equal(v, other.arrays()[k]), k
        elif name == "meta":
            assert other == value
        else:
            assert np.array_equal(np.asarray(value), np.asarray(other)), name
            assert np.asarray(value).dtype == np.asarray(other).dtype, name
    assert np.array_equal(back.crops(3), prep.crops(3)) and np.array_equal(back.masks(3), prep.masks(3))


# --------------------------------------------------------------------------- refusals

def test_refuses_a_video_without_a_face(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(100)]  # 4 s of noise
    with pytest.raises(EnrolError, match="no face was found"):
        prepare(write_video(tmp_path / "noise.mp4", frames), RES, tiny=True)


def test_refuses_too_short_and_unreadable(tmp_path: Path) -> None:
    short = write_video(tmp_path / "short.mp4", clip_frames(25))  # 1 s of the real clip
    with pytest.raises(EnrolError, match=r"too short \(1\.0 s\).*at least 3 s"):
        prepare(short, RES, tiny=True)
    with pytest.raises(EnrolError, match=r"too short \(5\.0 s\).*at least 30 s"):
        prepare(corpus_clip(), RES)  # full scale needs 30 s
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    with pytest.raises(EnrolError, match="cannot read junk.mp4"):
        prepare(junk, RES, tiny=True)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(EnrolError, match="^cancelled$"):
        prepare(corpus_clip(), RES, tiny=True, cancel=cancel)


def test_refuses_a_small_face_and_a_shaky_head(tmp_path: Path) -> None:
    with pytest.raises(EnrolError, match=r"only \d+ px tall.*1024x1024 renders need a face at least 512 px"):
        prepare(corpus_clip(), 1024, tiny=True)
    frames = clip_frames(80)
    shaky = []
    for i, rgb in enumerate(frames):  # the clip swinging around a larger canvas
        canvas = np.zeros((896, 896, 3), np.uint8)
        x, y = int(192 + 150 * np.sin(i * 2 * np.pi / 40)), int(192 + 150 * np.cos(i * 2 * np.pi / 53))
        canvas[y:y + 512, x:x + 512] = rgb
        shaky.append(canvas)
    with pytest.raises(EnrolError, match="the head moves too much"):
        prepare(write_video(tmp_path / "shaky.mp4", shaky), RES, tiny=True)


def test_the_gpu_checks_thinned_clip_keeps_every_other_frame_and_its_plate(prepared) -> None:
    from benchmarks.gpu_check_gaussian import thin

    prep, _ = prepared
    half = thin(prep, 2)
    assert half.n_frames == (prep.n_frames + 1) // 2 and half.meta["thinned_every"] == 2
    assert np.array_equal(half.crops([1]), prep.crops([2])) and np.array_equal(half.pose, prep.pose[::2])
    assert len(half.heldout_idx) > 0 and len(half.train_idx) > len(half.heldout_idx)
    for j in (0, len(half.plate_frames) - 1):  # a plate image still shows the frame it is listed for
        old = list(prep.plate_frames).index(2 * half.plate_frames[j])
        assert np.array_equal(half.plate(j), prep.plate(old))
