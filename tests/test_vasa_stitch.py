"""engines/vasa/stitch.py: Ditto's MotionStitch geometry, with golden numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from engines.vasa import stitch as S

RNG = np.random.default_rng(7)


def peaked(b: float, width: float = 2.0) -> np.ndarray:
    """66 logits of a Gaussian bump at bin b (a spread distribution, so logit and degree mixing differ)."""
    i = np.arange(66)
    return (-0.5 * ((i - b) / width) ** 2).astype(np.float32)


def one_hot(b: int) -> np.ndarray:
    logits = np.zeros(66, np.float32)
    logits[b] = 200.0  # softmax is one-hot to float precision
    return logits


def source_info(scale: float = 1.2) -> dict:
    return {
        "scale": np.array([[scale]], np.float32),  # the motion extractor's shapes
        "pitch": peaked(31)[None], "yaw": peaked(34)[None], "roll": peaked(32.5)[None],
        "t": np.array([[0.01, -0.02, 0.3]], np.float32),
        "exp": RNG.normal(0, 0.02, (1, 63)).astype(np.float32),
        "kp": RNG.normal(0, 0.3, (1, 63)).astype(np.float32),
    }


def motion(pitch: float = 33, yaw: float = 33, roll: float = 33, scale: float = 0.5, seed: int = 0) -> np.ndarray:
    r = np.random.default_rng(seed)
    info = {"scale": np.array([1 + scale]), "pitch": peaked(pitch, 3), "yaw": peaked(yaw, 3), "roll": peaked(roll, 3),
            "t": r.normal(0, 0.05, 3), "exp": r.normal(0, 0.03, 63)}
    return S.info_to_motion(info)


# ---- angles and keypoints -------------------------------------------------------------------

@pytest.mark.parametrize("b", [0, 10, 32, 33, 65])
def test_bin66_one_hot_is_3b_minus_97_5(b: int) -> None:
    assert S.bin66_to_degree(one_hot(b)) == pytest.approx(3 * b - 97.5, abs=1e-9)
    assert S.bin66_to_degree(one_hot(b)[None]) == pytest.approx(3 * b - 97.5, abs=1e-9)  # (1, 66)


def test_bin66_softmax_and_pass_through() -> None:
    assert S.bin66_to_degree(np.zeros(66)) == pytest.approx(0.0, abs=1e-9)  # uniform: mean bin 32.5
    two = np.full(66, -1e9)
    two[[10, 20]] = 0.0  # half and half: the mean of the two bins' degrees
    assert S.bin66_to_degree(two) == pytest.approx(3 * 15 - 97.5, abs=1e-9)
    assert S.bin66_to_degree(12.5) == 12.5  # already degrees (after a delta_* control)
    assert S.bin66_to_degree(np.array([-3.0], np.float32)) == -3.0
    batch = S.bin66_to_degree(np.stack([one_hot(0), one_hot(65)]))
    np.testing.assert_allclose(batch, [-97.5, 97.5])
    with pytest.raises(ValueError):
        S.bin66_to_degree(np.zeros(65))


def test_rotation_orthonormal() -> None:
    for p, y, r in RNG.uniform(-90, 90, (20, 3)):
        rot = S.rotation_matrix(p, y, r)
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(rot) == pytest.approx(1.0)


def test_rotation_convention() -> None:
    e = np.eye(3)
    np.testing.assert_allclose(e[0] @ S.rotation_matrix(0, 90, 0), [0, 0, -1], atol=1e-12)  # yaw
    np.testing.assert_allclose(e[1] @ S.rotation_matrix(90, 0, 0), [0, 0, 1], atol=1e-12)  # pitch
    np.testing.assert_allclose(e[0] @ S.rotation_matrix(0, 0, 90), [0, 1, 0], atol=1e-12)  # roll
    # R = (Rz Ry Rx)^T: kp @ R applies pitch first, then yaw: (0,1,0) -> (0,0,1) -> (1,0,0)
    np.testing.assert_allclose(e[1] @ S.rotation_matrix(90, 90, 0), [1, 0, 0], atol=1e-12)


def test_transform_keypoint_by_hand() -> None:
    kp = np.zeros((21, 3))
    kp[0] = (1, 0, 0)
    kp[1] = (0, 1, 0)
    exp = np.zeros((21, 3))
    exp[0] = (0.1, 0, 0)
    info = {"kp": kp.reshape(-1), "exp": exp.reshape(-1), "scale": np.array([2.0]), "t": np.array([0.5, -0.25, 7.0]),
            "pitch": 0.0, "yaw": 90.0, "roll": 0.0}
    x = S.transform_keypoint(info)
    assert x.shape == (21, 3) and x.dtype == np.float32
    # x = s * (kp @ R + exp) + (tx, ty, 0): t_z is not used
    np.testing.assert_allclose(x[0], [2 * 0.1 + 0.5, -0.25, -2.0], atol=1e-6)
    np.testing.assert_allclose(x[1], [0.5, 2 - 0.25, 0.0], atol=1e-6)
    np.testing.assert_allclose(x[2:], np.tile([0.5, -0.25, 0.0], (19, 1)), atol=1e-6)
    # logits give the same as their degrees
    logits = dict(info, yaw=one_hot(63))  # 3*63 - 97.5 = 91.5
    np.testing.assert_allclose(S.transform_keypoint(logits), S.transform_keypoint(dict(info, yaw=91.5)), atol=1e-6)


def test_motion_vector_layout() -> None:
    vec = np.arange(265, dtype=np.float32) / 100
    info = S.motion_to_info(vec)
    assert float(info["scale"][0]) == pytest.approx(1.0)  # vec[0] + 1
    np.testing.assert_array_equal(info["pitch"], vec[1:67])
    np.testing.assert_array_equal(info["yaw"], vec[67:133])
    np.testing.assert_array_equal(info["roll"], vec[133:199])
    np.testing.assert_array_equal(info["t"], vec[199:202])
    np.testing.assert_array_equal(info["exp"], vec[202:265])
    assert "kp" not in info
    np.testing.assert_allclose(S.info_to_motion(dict(info, kp=np.ones(63))), vec, atol=1e-7)  # kp ignored
    with pytest.raises(ValueError):
        S.motion_to_info(np.zeros(264))


# ---- MotionStitch -----------------------------------------------------------------------------

def test_source_keypoints() -> None:
    src = source_info()
    ms = S.MotionStitch(src)
    assert ms.x_s.shape == (21, 3) and ms.x_s.dtype == np.float32
    np.testing.assert_allclose(ms.x_s, S.transform_keypoint(src), atol=1e-7)
    x_s, x_d = ms.driving(motion(), 0)
    assert x_s is ms.x_s and x_d.shape == (21, 3) and x_d.dtype == np.float32


def test_relative_mix_in_logit_space() -> None:
    src = source_info()
    ms = S.MotionStitch(src, drive_eye=False)
    d0, vec = motion(33, 30, 33, scale=0.1, seed=1), motion(36, 33, 20, scale=0.9, seed=2)
    info = ms.driving_info(vec, 5, d0)
    drv, base = S.motion_to_info(vec), S.motion_to_info(d0)
    for k in ("pitch", "yaw", "roll", "t"):
        np.testing.assert_allclose(info[k], src[k].reshape(-1) + (drv[k] - base[k]), atol=1e-6)
    # mixing logits is not mixing degrees
    deg_mix = S.bin66_to_degree(src["pitch"]) + S.bin66_to_degree(drv["pitch"]) - S.bin66_to_degree(base["pitch"])
    assert abs(S.bin66_to_degree(info["pitch"]) - deg_mix) > 0.5
    # scale and kp are the source's, whatever the vector says
    assert float(info["scale"][0]) == pytest.approx(1.2)
    np.testing.assert_array_equal(info["kp"], src["kp"].reshape(-1))
    # lip keypoints relative, all others the source's (drive_eye off)
    lip = np.zeros((21, 3), bool)
    lip[list(S.LIP_KP)] = True
    lip = lip.reshape(-1)
    np.testing.assert_allclose(info["exp"][lip], (src["exp"].reshape(-1) + drv["exp"] - base["exp"])[lip], atol=1e-7)
    np.testing.assert_array_equal(info["exp"][~lip], src["exp"].reshape(-1)[~lip])
    np.testing.assert_allclose(ms.driving(vec, 5, d0)[1], S.transform_keypoint(info), atol=1e-7)


def test_d0_defaults_to_first_vector() -> None:
    src = source_info()
    ms = S.MotionStitch(src, drive_eye=False)
    first = motion(40, 20, 30, seed=3)
    info = ms.driving_info(first, 0)  # no d0 given: the first vector is the anchor
    np.testing.assert_allclose(info["pitch"], src["pitch"].reshape(-1), atol=1e-6)
    later = ms.driving_info(motion(41, 20, 30, seed=3), 1)
    assert not np.allclose(later["pitch"], src["pitch"].reshape(-1))


def test_reference_character_gains() -> None:
    src = source_info(scale=1.2)
    ch = {"x_s_info_lst": [dict(source_info(), scale=np.array([[1.5]], np.float32))]}
    ms = S.MotionStitch(src, ch_info=ch, drive_eye=False)
    r = 1.5 / 1.2
    assert ms.gains == pytest.approx({"exp": r, "pitch": r, "yaw": r, "roll": r, "t": 1.0})
    d0, vec = motion(33, 30, 33, seed=1), motion(36, 33, 20, seed=2)
    info = ms.driving_info(vec, 0, d0)
    drv, base = S.motion_to_info(vec), S.motion_to_info(d0)
    np.testing.assert_allclose(info["yaw"], src["yaw"].reshape(-1) + (drv["yaw"] - base["yaw"]) * r, atol=1e-6)
    np.testing.assert_allclose(info["t"], src["t"].reshape(-1) + (drv["t"] - base["t"]), atol=1e-7)
    assert S.MotionStitch(src).gains == {k: 1.0 for k in S.DEFAULT_D_KEYS}  # no reference: gains 1


def _same_pose_pair(seed: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """d0 and a vector with the same pose (so the gaze fix adds nothing) but other expressions."""
    d0 = motion(33, 33, 33, seed=seed)
    vec = d0.copy()
    vec[202:] = np.random.default_rng(seed + 1).normal(0, 0.03, 63)
    return d0, vec


def _kp_mask(kps: tuple[int, ...]) -> np.ndarray:
    m = np.zeros((21, 3), bool)
    m[list(kps)] = True
    return m.reshape(-1)


def test_eye_masks() -> None:
    src = source_info()
    s_exp = src["exp"].reshape(-1)
    d0, vec = _same_pose_pair()
    rel = s_exp + S.motion_to_info(vec)["exp"] - S.motion_to_info(d0)["exp"]
    lip, eye = _kp_mask(S.LIP_KP), _kp_mask(S.EYE_KP)
    rest = ~(lip | eye)

    driven = S.MotionStitch(src, drive_eye=True).driving_info(vec, 0, d0)["exp"]  # eyes follow the LMDM
    np.testing.assert_allclose(driven[lip | eye], rel[lip | eye], atol=1e-6)
    np.testing.assert_array_equal(driven[rest], s_exp[rest])

    still = S.MotionStitch(src, drive_eye=False).driving_info(vec, 0, d0)["exp"]  # eyes keep the source's
    np.testing.assert_array_equal(still[eye], s_exp[eye])

    arr = RNG.normal(0, 0.01, (15, 63)).astype(np.float32)
    ms = S.MotionStitch(src, drive_eye=True, delta_eye_arr=arr, rng=np.random.default_rng(0))
    frame = int(np.flatnonzero(ms.blink_idx == 7)[0])  # mid-blink
    blink = ms.driving_info(vec, frame, d0)["exp"]
    np.testing.assert_allclose(blink[eye], (s_exp + arr[7])[eye], atol=1e-7)  # source eyes + blink row
    np.testing.assert_allclose(blink[lip], rel[lip], atol=1e-6)
    np.testing.assert_array_equal(blink[rest], s_exp[rest])
    wrapped = ms.driving_info(vec, frame + S.BLINK_LIST_LEN, d0)["exp"]  # the schedule is used modulo
    np.testing.assert_array_equal(wrapped, blink)
    assert ms.driving_info(vec, 0, d0)["exp"][eye] == pytest.approx((s_exp + arr[0])[eye])  # open: row 0


def test_blink_schedule_seeded_and_bounded() -> None:
    a = S.blink_schedule(3000, 15, 0, np.random.default_rng(123))
    b = S.blink_schedule(3000, 15, 0, np.random.default_rng(123))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, S.blink_schedule(3000, 15, 0, np.random.default_rng(124)))
    starts = np.flatnonzero(a == 1) - 1  # where each blink's row 0 is
    assert len(starts) > 20
    for s in starts:
        np.testing.assert_array_equal(a[s:s + 15], np.arange(15))  # every blink plays rows 0..14
    assert set(np.unique(a)) == set(range(15))
    assert (a == 0).sum() == 3000 - 14 * len(starts)
    assert 60 <= starts[0] <= 100  # the first gap
    gaps = np.diff(starts) - 15
    assert gaps.min() >= 60 and gaps.max() <= 100 and len(set(gaps)) > 5
    assert starts[-1] < 3000 - 60  # no blink starts within the last drawn gap (the clip ends open)
    # two streams with the same seed blink together
    ms = [S.MotionStitch(source_info(), delta_eye_arr=np.zeros((15, 63)), rng=np.random.default_rng(9)) for _ in range(2)]
    np.testing.assert_array_equal(ms[0].blink_idx, ms[1].blink_idx)


def test_blink_schedule_fixed_and_listed_gaps() -> None:
    assert not S.blink_schedule(500, 15, -1).any()
    fixed = S.blink_schedule(400, 15, 70)
    np.testing.assert_array_equal(np.flatnonzero(fixed == 1), [71, 156, 241, 326])  # starts 70, then every 85
    listed = S.blink_schedule(400, 15, [60, 80])
    np.testing.assert_array_equal(np.flatnonzero(listed == 1), [61, 156, 231])  # 60, then gaps 80, 60
    assert S.MotionStitch(source_info(), drive_eye=False, delta_eye_arr=np.zeros((15, 63))).blink_idx is None


def test_gaze_fix() -> None:
    src = source_info()
    d0 = motion(33, 33, 33, seed=5)
    vec = d0.copy()  # no motion at all: only the controls move the head
    s_exp = src["exp"].reshape(-1)
    ms = S.MotionStitch(src, drive_eye=True)

    exp = ms.driving_info(vec, 0, d0, {"delta_yaw": 10.0, "delta_pitch": 5.0})["exp"]
    want = s_exp.astype(np.float64).copy()
    want[33] += 10 * 0.26 * 0.0007  # turning right: keypoint 11 less than keypoint 15
    want[45] += 10 * 0.26 * 0.001
    want[34] += 5 * 0.28 * -0.001
    want[46] += 5 * 0.28 * -0.001
    np.testing.assert_allclose(exp, want, atol=1e-7)

    exp = ms.driving_info(vec, 0, d0, {"delta_yaw": -10.0})["exp"]
    assert exp[33] - s_exp[33] == pytest.approx(-10 * 0.26 * 0.001, abs=1e-7)
    assert exp[45] - s_exp[45] == pytest.approx(-10 * 0.26 * 0.0007, abs=1e-7)
    assert exp[34] == pytest.approx(s_exp[34], abs=1e-7)

    off = S.MotionStitch(src, drive_eye=False).driving_info(vec, 0, d0, {"delta_yaw": 10.0})["exp"]
    np.testing.assert_array_equal(off, s_exp)


def test_delta_pitch_shifts_pitch_by_two_degrees() -> None:
    src = source_info()
    d0, vec = motion(33, 30, 33, seed=1), motion(35, 31, 34, seed=2)
    plain = S.MotionStitch(src, drive_eye=False).driving_info(vec, 0, d0)
    ms = S.MotionStitch(src, drive_eye=False, overall_ctrl_info={"delta_pitch": 2})
    info = ms.driving_info(vec, 0, d0)
    assert isinstance(info["pitch"], float)  # converted to degrees, as Ditto's ctrl_motion does
    assert info["pitch"] == pytest.approx(S.bin66_to_degree(plain["pitch"]) + 2, abs=1e-6)
    np.testing.assert_array_equal(info["yaw"], plain["yaw"])
    want = S.transform_keypoint(dict(plain, pitch=S.bin66_to_degree(plain["pitch"]) + 2))
    np.testing.assert_allclose(ms.driving(vec, 0, d0)[1], want, atol=1e-6)
    # a frame's own control wins over the overall one
    assert ms.driving_info(vec, 0, d0, {"delta_pitch": 0})["pitch"] == pytest.approx(S.bin66_to_degree(plain["pitch"]))
    # the gaze fix runs after the controls, so it sees the +2 degrees too (as in Ditto)
    eyes = S.MotionStitch(src, overall_ctrl_info={"delta_pitch": 2})
    d0s, vecs = _same_pose_pair()
    exp = eyes.driving_info(vecs, 0, d0s)["exp"]
    base = S.MotionStitch(src).driving_info(vecs, 0, d0s)["exp"]
    assert exp[34] - base[34] == pytest.approx(2 * 0.28 * -0.001, abs=1e-7)


def test_vad_alpha() -> None:
    src = source_info()
    s_exp = src["exp"].reshape(-1)
    d0, vec = _same_pose_pair()
    ms = S.MotionStitch(src, drive_eye=True)
    full = ms.driving_info(vec, 0, d0)["exp"]
    quiet = ms.driving_info(vec, 0, d0, {"vad_alpha": 0.25})["exp"]
    np.testing.assert_allclose(quiet, full * 0.25 + s_exp * 0.75, atol=1e-7)  # the whole expression
    np.testing.assert_array_equal(ms.driving_info(vec, 0, d0, {"vad_alpha": 1.0})["exp"], full)
    np.testing.assert_allclose(ms.driving_info(vec, 0, d0, {"vad_alpha": 0.0})["exp"], s_exp, atol=1e-7)


def test_fade_to_source() -> None:
    src = source_info()
    d0, vec = _same_pose_pair()
    ms = S.MotionStitch(src, drive_eye=False, fade_type="s")
    faded = ms.driving_info(vec, 0, d0, {"fade_alpha": 0.0})
    np.testing.assert_allclose(faded["exp"], src["exp"].reshape(-1), atol=1e-7)
    unfaded = S.MotionStitch(src, drive_eye=False).driving_info(vec, 0, d0, {"fade_alpha": 0.0})  # no fade_type
    assert not np.allclose(unfaded["exp"], src["exp"].reshape(-1))
