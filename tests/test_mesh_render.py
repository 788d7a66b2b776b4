"""The `mesh` renderer: rest state untouched, opening and closure measured by FaceMesh on the output,
blinks, and the contract (shape, dtype, input untouched). Timing is printed, not asserted."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.face import FaceLandmarker, mouth_opening
from engines.mesh.geometry import LIP_LOWER_OUTER, LIP_UPPER_OUTER, eye_gap
from engines.head_motion.model import HeadPose
from engines.mesh.prepare import prepare_face
from engines.mesh.render import render_mouth
from engines.mouth import MouthParams
from tests.media import shared_media, video_frames

ASTRONAUT = Path(__file__).resolve().parents[1] / "stream_server" / "assets" / "astronaut.jpg"
PORTRAIT = ("image", "liveportrait_s11.jpg")


def _load(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path))
    assert bgr is not None, f"cannot read {path}"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def landmarker():
    with FaceLandmarker(tracking=False) as lm:
        yield lm


@pytest.fixture(scope="module", params=["astronaut", "portrait"])
def face(request, landmarker):
    path = ASTRONAUT if request.param == "astronaut" else shared_media(*PORTRAIT)
    image = _load(path)
    found = landmarker.faces(image)
    assert found, f"no face found in {path}"
    return image, found[0].landmarks, prepare_face(image, found[0].landmarks)


def _measure(landmarker, image: np.ndarray) -> np.ndarray:
    found = landmarker.faces(image)
    assert found, "FaceMesh lost the face on the rendered frame"
    return found[0].landmarks


def test_rest_state_leaves_the_frame_outside_the_mouth_unchanged(face):
    image, lm, prepared = face
    out = render_mouth(prepared, MouthParams(prepared.rest_open, 0.0, 0.0))
    assert out.shape == image.shape and out.dtype == np.uint8
    # outside a generously dilated lower-face region every pixel is exactly the input
    s = prepared.scale
    lower = lm[[61, 291, 152, 172, 397, 2], :2]
    mask = np.zeros(image.shape[:2], np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(lower).astype(np.int32)), 1)
    mask = cv2.dilate(mask, np.ones((int(0.3 * s) * 2 + 1,) * 2, np.uint8))
    same = np.all(out == image, axis=2)
    assert same[mask == 0].all(), f"{int((~same[mask == 0]).sum())} pixels changed outside the mouth"
    # the top of the face (above the nose tip) and the borders, explicitly
    nose_y = int(lm[1, 1] - 0.1 * s)
    assert np.array_equal(out[:nose_y], image[:nose_y])
    assert np.array_equal(out[:, :4], image[:, :4]) and np.array_equal(out[:, -4:], image[:, -4:])
    # and within the mouth, rest means the original
    assert np.abs(out.astype(int) - image).max() <= 2


def test_opening_increases_the_measured_gap(face, landmarker):
    image, _, prepared = face
    gaps = []
    for value in (0.0, 0.3, 0.6, 0.9):
        t0 = time.perf_counter()
        out = render_mouth(prepared, MouthParams(value))
        ms = (time.perf_counter() - t0) * 1e3
        gaps.append(mouth_opening(_measure(landmarker, out)))
        print(f"open={value:.1f}: measured {gaps[-1]:.3f}, render {ms:.1f} ms ({image.shape[1]}x{image.shape[0]})")
    assert all(b > a for a, b in zip(gaps, gaps[1:])), f"opening not monotonic: {gaps}"
    assert gaps[-1] >= 0.2, f"open=0.9 measures only {gaps[-1]:.3f}"


def test_closure_shuts_the_mouth(face, landmarker):
    _, _, prepared = face
    out = render_mouth(prepared, MouthParams(0.6, 0.0, 1.0))
    gap = mouth_opening(_measure(landmarker, out))
    assert gap < 0.05, f"closure=1 still measures {gap:.3f}"


def test_a_wide_open_source_mouth_closes_and_reopens_in_order(landmarker):
    # the first frame of a talking clip, caught mid-word with the mouth wide open (FaceMesh reads
    # about 0.3): closing it must read as closed, and the opening must rise with `open` from there
    # (with the upper lip taking half of the closing it read 0.06, 0.07, 0.04, 0.09)
    _, image = next(video_frames(shared_media("video", "vretalking_face_3.mp4")))
    found = landmarker.faces(image)
    assert found, "no face in the first frame of vretalking_face_3.mp4"
    prepared = prepare_face(image, found[0].landmarks)
    assert prepared.rest_open > 0.6, f"expected a wide-open source mouth, rest_open {prepared.rest_open:.2f}"
    gaps = [mouth_opening(_measure(landmarker, render_mouth(prepared, MouthParams(value))))
            for value in (0.0, 0.2, 0.4, 0.6)]
    print("measured", [round(g, 3) for g in gaps])
    assert gaps[0] < 0.03, f"open=0 from a wide-open mouth still measures {gaps[0]:.3f}"
    assert all(b > a for a, b in zip(gaps, gaps[1:])), f"opening not monotonic: {gaps}"


def test_closing_an_open_source_mouth_leaves_no_specks(landmarker):
    # pcavs_vox2_00015's first frame (224 px, mouth open): closing it once left single pixels of
    # teeth and cavity along the lower lip (9 pixels more than 60 levels off their 5x5 median)
    _, image = next(video_frames(shared_media("video", "pcavs_vox2_00015.mp4")))
    lm = landmarker.faces(image)[0].landmarks
    prepared = prepare_face(image, lm)
    assert prepared.cavity is not None
    out = render_mouth(prepared, MouthParams(0.0))
    off = np.abs(out.astype(int) - cv2.medianBlur(out, 5)).max(axis=2)
    lips = lm[list(LIP_UPPER_OUTER + LIP_LOWER_OUTER), :2]
    (x0, y0), (x1, y1) = (lips.min(0) - 0.3 * prepared.scale).astype(int), (lips.max(0) + 0.3 * prepared.scale).astype(int)
    specks = int((off[y0:y1, x0:x1] > 60).sum())
    assert specks <= 2, f"{specks} speck pixels around the closed mouth"


def test_camera_frames_reuse_the_previous_triangulation_while_it_fits() -> None:
    frames = [frame for _, frame in video_frames(shared_media("video", "vretalking_face_3.mp4"))][:30]
    previous, reused = None, 0
    with FaceLandmarker(tracking=True) as tracker:
        for frame in frames:
            lm = tracker.faces(frame)[0].landmarks
            face = prepare_face(frame, lm, previous)
            if previous is not None and face.triangles is previous.triangles:
                reused += 1
                fresh = render_mouth(prepare_face(frame, lm), MouthParams(0.5, 0.3, 0.0))
                again = render_mouth(face, MouthParams(0.5, 0.3, 0.0))
                assert np.abs(fresh.astype(int) - again).mean() < 0.2  # another valid mesh, same picture
            previous = face
    assert reused >= 5, f"the triangulation was reused in only {reused} of {len(frames)} frames"


def test_blink_closes_the_eyes(face, landmarker):
    image, _, prepared = face
    before = eye_gap(_measure(landmarker, image))
    after = eye_gap(_measure(landmarker, render_mouth(prepared, MouthParams(prepared.rest_open), HeadPose(blink=1.0))))
    assert after < 0.5 * before, f"blink=1: eye gap {before:.3f} -> {after:.3f}"


def test_contract_and_input_untouched(face):
    image, lm, _ = face
    image_copy, lm_copy = image.copy(), lm.copy()
    prepared = prepare_face(image, lm)
    for params, pose in ((MouthParams(0.7, 0.5, 0.0), HeadPose(3.0, -2.0, 1.5, 0.02, -0.01, 0.03, blink=0.5)),
                         (MouthParams(0.0, -1.0, 1.0), HeadPose(blink=1.0))):
        out = render_mouth(prepared, params, pose)
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert out is not image and not np.shares_memory(out, image)
    assert np.array_equal(image, image_copy) and np.array_equal(lm, lm_copy)


def test_print_timing(face):
    image, lm, prepared = face
    cv2.setNumThreads(1)
    prep = []
    for _ in range(10):
        t0 = time.perf_counter()
        prepare_face(image, lm)
        prep.append((time.perf_counter() - t0) * 1e3)
    ms = []
    for k in range(60):
        pose = HeadPose(3 * np.sin(k / 7), 2 * np.sin(k / 5), np.sin(k / 9), 0.0, 0.0, 0.02 * max(np.sin(k / 4), 0), 0.0)
        t0 = time.perf_counter()
        render_mouth(prepared, MouthParams(0.5 + 0.4 * np.sin(k / 3), 0.3 * np.cos(k / 5), 0.0), pose)
        ms.append((time.perf_counter() - t0) * 1e3)
    print(f"{image.shape[1]}x{image.shape[0]}: prepare p50 {np.median(prep):.1f} ms; "
          f"render p50 {np.median(ms):.1f} / p95 {np.percentile(ms, 95):.1f} ms (one thread)")
