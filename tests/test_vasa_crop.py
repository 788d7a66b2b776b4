"""engines/vasa/crop.py: the similarity crops, the paste mask and the putback."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from engines.vasa import crop as C

PORTRAIT = "/work/shared/testdata/image/liveportrait_s11.jpg"
RNG = np.random.default_rng(3)


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    return np.asarray(pts, np.float64) @ m[:2, :2].T + m[:2, 2]


def rot2(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


# ---- the 512 crop from 203 points -----------------------------------------------------------

def canonical_203() -> np.ndarray:
    """203 points in a face frame (y down): the box is [-50, 50]^2, the eye quads centre on
    (0, -20), the lip pair on (0, 30), so the face's vertical axis is the frame's."""
    pts = RNG.uniform(-50, 50, (203, 2))
    pts[:4] = [(-50, -50), (50, -50), (50, 50), (-50, 50)]
    pts[list(C.L203_EYE_L)] = [(-30, -25), (-20, -15), (-30, -15), (-20, -25)]
    pts[list(C.L203_EYE_R)] = [(30, -25), (20, -15), (30, -15), (20, -25)]
    pts[48], pts[66] = (-10, 30), (10, 30)
    return pts


@pytest.mark.parametrize("angle", [0.0, 30.0, -75.0])
def test_crop_from_lmk203_by_hand(angle: float) -> None:
    canon = canonical_203()
    image_pts = canon @ rot2(angle).T + (640.0, 360.0)  # the same face rolled and moved
    image = np.zeros((720, 1280, 3), np.uint8)
    crop, m_c2o = C.crop_from_lmk203(image_pts, image)
    assert crop.shape == (512, 512, 3) and crop.dtype == np.uint8 and m_c2o.shape == (3, 3)
    # box side 100 x 2.3 = 230 -> 512; centre moved up by 0.125 x 230 along the face axis; roll undone
    want = 256 + (512 / 230) * (canon - (0.0, -0.125 * 230))
    np.testing.assert_allclose(apply(np.linalg.inv(m_c2o), image_pts), want, atol=2e-3)
    np.testing.assert_allclose(apply(m_c2o, want), image_pts, atol=2e-3)


def test_crop_image_follows_its_matrix() -> None:
    image = np.zeros((720, 1280, 3), np.uint8)
    spot = (700.0, 300.0)
    cv2.circle(image, (int(spot[0]), int(spot[1])), 4, (255, 255, 255), -1)
    pts = canonical_203() @ rot2(20).T + (640.0, 360.0)
    crop, m_c2o = C.crop_from_lmk203(pts, image)
    ys, xs = np.nonzero(crop[..., 0] > 128)
    np.testing.assert_allclose([xs.mean(), ys.mean()], apply(np.linalg.inv(m_c2o), np.array([spot]))[0], atol=1.0)


def test_lmk203_to_image() -> None:
    m_seed = np.array([[2.0, 0.0, 100.0], [0.0, 2.0, 50.0], [0, 0, 1]], np.float32)  # crop -> image
    raw = np.zeros((1, 406), np.float32)
    raw[0, :2] = (0.5, 0.25)  # (112, 56) in the 224 crop
    raw[0, 2:4] = (1.0, 1.0)
    pts = C.lmk203_to_image(raw, m_seed)
    assert pts.shape == (203, 2)
    np.testing.assert_allclose(pts[0], [2 * 112 + 100, 2 * 56 + 50])
    np.testing.assert_allclose(pts[1], [2 * 224 + 100, 2 * 224 + 50])
    np.testing.assert_allclose(pts[2], [100, 50])


def test_model_inputs() -> None:
    crop = RNG.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    x = C.to_model_input(crop)
    assert x.shape == (1, 3, 256, 256) and x.dtype == np.float32 and x.flags.c_contiguous
    # INTER_AREA halving is the mean of each 2x2 block
    np.testing.assert_allclose(x[0, 1, 10, 20], crop[20:22, 40:42, 1].mean() / 255, atol=1 / 255)
    assert 0 <= x.min() and x.max() <= 1
    seed = RNG.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    y = C.to_lmk203_input(seed)
    assert y.shape == (1, 3, 224, 224)
    np.testing.assert_allclose(y[0, 2, 5, 7], seed[5, 7, 2] / 255)


# ---- the seed crop from MediaPipe on a real portrait ----------------------------------------

@pytest.fixture(scope="module")
def portrait():
    from engines.face import FaceLandmarker

    bgr = cv2.imread(PORTRAIT)
    assert bgr is not None, PORTRAIT
    image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    h, w = image.shape[:2]
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), 25, 1.0)
    rolled = cv2.warpAffine(image, turn, (w, h), flags=cv2.INTER_LINEAR)
    with FaceLandmarker() as landmarker:
        faces = [landmarker.faces(image), landmarker.faces(rolled)]
        assert faces[0] and faces[1]
        crop, m = C.seed_crop(faces[0][0].landmarks, image)
        again = landmarker.faces(crop)
    assert again
    return image, faces[0][0].landmarks, faces[1][0].landmarks, crop, m, again[0].landmarks


def test_seed_crop_centres_the_face(portrait) -> None:
    image, lm, _, crop, m, _ = portrait
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8 and m.shape == (3, 3)
    to_crop = np.linalg.inv(m)
    box, eye, lip = C.seed_points(lm)
    eye_c, lip_c = apply(to_crop, np.array([eye, lip]))
    # roll corrected: the eye centre is straight above the lip centre
    assert eye_c[0] == pytest.approx(lip_c[0], abs=1e-2) and eye_c[1] < lip_c[1]
    # the box of the seed points: its larger side is 224 / 1.5, its centre 0.1 x 224 below the middle
    pts = apply(to_crop, box)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    assert max(hi - lo) == pytest.approx(224 / 1.5, abs=0.05)
    np.testing.assert_allclose((lo + hi) / 2, [112, 112 + 0.1 * 224], atol=0.05)
    # a frontal face: both centres near the middle column, the eyes above the middle, the mouth below
    assert abs(eye_c[0] - 112) < 8
    assert 85 < eye_c[1] < 112 < 150 < lip_c[1] < 180
    cheeks = apply(to_crop, lm[[234, 454], :2])
    assert abs((cheeks[0, 0] + cheeks[1, 0]) / 2 - 112) < 8  # the face is in the middle
    chin = apply(to_crop, lm[[152], :2])[0]
    assert 185 < chin[1] < 224


def test_seed_crop_image_matches_its_matrix(portrait) -> None:
    _, lm, _, _, m, lm_crop = portrait
    # FaceMesh run again on the crop finds the face where the matrix puts it
    err = np.linalg.norm(lm_crop[:, :2] - apply(np.linalg.inv(m), lm[:, :2]), axis=1)
    assert np.median(err) < 1.5 and err.max() < 6


def test_seed_crop_undoes_roll(portrait) -> None:
    image, lm, lm_rolled, _, m, _ = portrait
    _, m_rolled = C.seed_crop(lm_rolled, image)  # only the matrix is compared
    for landmarks, mat in ((lm, m), (lm_rolled, m_rolled)):
        _, eye, lip = C.seed_points(landmarks)
        e, l = apply(np.linalg.inv(mat), np.array([eye, lip]))
        assert e[0] == pytest.approx(l[0], abs=1e-2)
    # the crop -> image matrix of the rolled portrait turns by the same 25 degrees
    angle = math.degrees(math.atan2(m_rolled[1, 0], m_rolled[0, 0]) - math.atan2(m[1, 0], m[0, 0]))
    assert angle == pytest.approx(-25, abs=2.5)
    assert np.linalg.norm(m_rolled[:2, 0]) == pytest.approx(np.linalg.norm(m[:2, 0]), rel=0.05)


def test_seed_points_definition(portrait) -> None:
    _, lm, _, _, _, _ = portrait
    box, eye, lip = C.seed_points(lm)
    np.testing.assert_allclose(lip, (lm[13, :2] + lm[14, :2]) / 2, atol=1e-4)  # inner-lip midpoint
    eyes = (lm[[33, 133, 159, 145], :2].mean(axis=0) + lm[[263, 362, 386, 374], :2].mean(axis=0)) / 2
    np.testing.assert_allclose(eye, eyes, atol=1e-4)
    # the box spans the cheeks and the chin and stops at the brows (no forehead, like the 106 set)
    assert box[:, 0].min() <= lm[234, 0] and box[:, 0].max() >= lm[454, 0] and box[:, 1].max() >= lm[152, 1]
    assert box[:, 1].min() == pytest.approx(lm[list(C.MP_BROWS), 1].min(), abs=1e-4)
    assert box[:, 1].min() > lm[10, 1] + 10


def test_crop_from_lmk203_has_no_vx() -> None:
    with pytest.raises(TypeError):  # Ditto's crop_image drops crop_vx_ratio
        C.crop_from_lmk203(canonical_203() + 300, np.zeros((600, 600, 3), np.uint8), vx_ratio=0.1)


def test_seed_box_choice(portrait) -> None:
    _, lm, _, _, m, _ = portrait
    _, m_oval = C.seed_crop(lm, np.zeros((8, 8, 3), np.uint8), box="oval")
    # the full oval has the forehead, so its crop is larger than the 106-like brows box
    assert np.linalg.norm(m_oval[:2, 0]) > np.linalg.norm(m[:2, 0])
    with pytest.raises(ValueError):
        C.seed_points(lm, box="ears")
    with pytest.raises(ValueError):
        C.seed_points(lm[:100])


# ---- the mask -----------------------------------------------------------------------------------

def test_paste_mask_ramp() -> None:
    mask = C.paste_mask(512, 0.9)
    assert mask.shape == (512, 512) and mask.dtype == np.float32
    # int(512 * 0.9) = 460: 26-pixel strips each side, ramping 0 -> 1 over them
    assert (mask[26:486, 26:486] == 1).all()
    assert mask[256, 0] == 0 and mask[0, 256] == 0 and mask[511, 256] == 0 and mask[256, 511] == 0
    np.testing.assert_allclose(mask[256, :26], np.arange(26) / 25, atol=1e-6)
    np.testing.assert_allclose(mask[:26, 256], np.arange(26) / 25, atol=1e-6)
    np.testing.assert_allclose(mask[256, 486:], np.arange(25, -1, -1) / 25, atol=1e-6)
    # corners: 1 - distance to the inner corner, in strip widths
    assert mask[0, 0] == 0 and mask[25, 25] == 1 and mask[511, 511] == 0 and mask[486, 486] == 1
    assert mask[20, 20] == pytest.approx(1 - math.hypot(5, 5) / 25, abs=1e-6)
    assert mask[5, 25] == pytest.approx(5 / 25, abs=1e-6)  # along the corner's edge: the strip's ramp
    assert mask[0, 10] == 0  # clipped at 0 beyond one strip width
    np.testing.assert_array_equal(mask, mask[::-1, ::-1])
    np.testing.assert_array_equal(mask, mask.T)
    assert 0 <= mask.min() and mask.max() <= 1


# ---- the putback ------------------------------------------------------------------------------

def face_c2o(side: float, angle: float, centre: tuple[float, float]) -> np.ndarray:
    """crop -> image for a 512 crop showing a ``side``-pixel square turned by ``angle`` degrees."""
    lin = rot2(angle) * (side / 512)
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = np.asarray(centre) - lin @ (256.0, 256.0)
    return m.astype(np.float32)


def reference_paste(frame, render255, m_c2o, mask):
    """Ditto's putback written out plainly over the whole frame."""
    h, w = frame.shape[:2]
    mw = np.clip(cv2.warpAffine(mask, m_c2o[:2], (w, h), flags=cv2.INTER_LINEAR), 0, 1)[..., None]
    rw = cv2.warpAffine(render255, m_c2o[:2], (w, h), flags=cv2.INTER_LINEAR)
    return np.clip(mw * rw + (1 - mw) * frame.astype(np.float32), 0, 255).astype(np.uint8), mw[..., 0]


@pytest.fixture
def scene():
    frame = RNG.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    render = cv2.GaussianBlur(RNG.random((512, 512, 3), dtype=np.float32), (0, 0), 1.0)
    return frame, render, face_c2o(600.0, 12.0, (650.3, 371.7))


def test_putback_matches_full_frame_blend(scene) -> None:
    frame, render, m = scene
    pb = C.Putback(m, frame.shape[:2])
    out = pb.paste(frame, render)
    assert out.shape == frame.shape and out.dtype == np.uint8
    want, _ = reference_paste(frame, render * 255, m, C.paste_mask())
    if pb.exact:
        np.testing.assert_array_equal(out, want)
    else:  # another OpenCV: the box warp may round sub-pixel positions differently
        assert np.abs(out.astype(int) - want).max() <= 8 and (out != want).mean() < 0.02
    x0, y0, x1, y1 = pb.box
    assert x1 - x0 < 1280 and (x0, x1) != (0, 1280)  # only the crop's box is worked on


def test_box_warp_fallback_is_close(scene) -> None:
    frame, render, m = scene
    pb = C.Putback(m, frame.shape[:2])
    pb.exact = False  # the path taken when the remap tables do not match this OpenCV
    out = pb.paste(frame, render)
    want, _ = reference_paste(frame, render * 255, m, C.paste_mask())
    assert np.abs(out.astype(int) - want).max() <= 8 and (out != want).mean() < 0.05


def test_outside_the_crop_is_the_frame(scene) -> None:
    frame, render, m = scene
    out = C.Putback(m, frame.shape[:2]).paste(frame, np.ones_like(render))
    _, mw = reference_paste(frame, render, m, C.paste_mask())
    outside = mw == 0
    assert outside.mean() > 0.4
    np.testing.assert_array_equal(out[outside], frame[outside])
    assert (out[mw == 1] == 255).all()


def test_full_mask_gives_the_warped_render(scene) -> None:
    frame, render, m = scene
    ones = np.ones((512, 512), np.float32)
    pb = C.Putback(m, frame.shape[:2], mask=ones)
    out = pb.paste(frame, render)
    h, w = frame.shape[:2]
    warped = cv2.warpAffine(render * 255, m[:2], (w, h), flags=cv2.INTER_LINEAR)
    inside = cv2.warpAffine(ones, m[:2], (w, h), flags=cv2.INTER_LINEAR) == 1
    assert inside.mean() > 0.2
    want = np.clip(warped[inside], 0, 255).astype(np.uint8)
    if pb.exact:
        np.testing.assert_array_equal(out[inside], want)
    else:  # another OpenCV: see test_putback_matches_full_frame_blend
        assert np.abs(out[inside].astype(int) - want).max() <= 8


def test_blend_truncates() -> None:
    frame = np.full((300, 400, 3), 100, np.uint8)
    m = face_c2o(200.0, 0.0, (200.0, 150.0))
    ones = np.ones((512, 512), np.float32)
    out = C.Putback(m, frame.shape[:2], mask=ones).paste(frame, np.full((512, 512, 3), 100.9 / 255, np.float32))
    assert out[150, 200, 0] == 100  # 100.9 -> 100, not 101
    half = C.Putback(m, frame.shape[:2], mask=ones * 0.5)
    out = half.paste(frame, np.full((512, 512, 3), 101, np.uint8))  # uint8 renders too
    assert out[150, 200, 1] == 100  # 0.5 * 101 + 0.5 * 100 = 100.5 -> 100
    over = C.Putback(m, frame.shape[:2], mask=ones * 2)  # the mask is clipped to 1
    assert over.paste(frame, np.full((512, 512, 3), 1.0, np.float32))[150, 200, 2] == 255


def test_putback_edges_and_errors() -> None:
    frame = RNG.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    render = np.full((512, 512, 3), 0.5, np.float32)
    partly = C.Putback(face_c2o(300.0, 5.0, (300.0, 20.0)), frame.shape[:2])  # half outside the frame
    out = partly.paste(frame, render)
    want, _ = reference_paste(frame, render * 255, face_c2o(300.0, 5.0, (300.0, 20.0)), C.paste_mask())
    assert np.abs(out.astype(int) - want).max() <= (0 if partly.exact else 8)
    gone = C.Putback(face_c2o(100.0, 0.0, (2000.0, 2000.0)), frame.shape[:2])  # wholly outside
    np.testing.assert_array_equal(gone.paste(frame, render), frame)
    with pytest.raises(ValueError):
        partly.paste(frame[:100], render)
    with pytest.raises(ValueError):
        partly.paste(frame, render[:256])


def test_box_warp_is_byte_exact_on_the_pinned_opencv(scene) -> None:
    _, _, m = scene
    major, minor = (int(v) for v in cv2.__version__.split(".")[:2])
    if (major, minor) >= (4, 12):
        pytest.skip(f"OpenCV {cv2.__version__} is outside the project's pin; putback falls back to a box warpAffine")
    assert C.Putback(m, (720, 1280)).exact  # the remap tables reproduce warpAffine
