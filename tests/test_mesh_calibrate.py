"""The `mesh` renderer's per-portrait opening calibration: the map from a read-back sweep, and
renders of a closed and an open source mouth that read back closer to the opening asked for."""

from __future__ import annotations

import numpy as np
import pytest

from engines.face import FaceLandmarker, mouth_opening
from engines.media_io import video_frames
from engines.mesh.calibrate import SWEEP, calibrate, opening_map
from engines.mesh.prepare import prepare_face
from engines.mesh.render import render_mouth
from engines.mouth import OPENING_AT_FULL, MouthParams
from tests.media import shared_media

ASKED = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9)


def test_the_map_inverts_the_read_back_and_caps_what_the_portrait_cannot_show() -> None:
    drawn = np.array([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    read = np.array([0.0, 0.05, 0.2, 0.5, 0.7, 0.6])  # a dead zone, then a dip past the peak
    m = opening_map(drawn, read)
    assert m is not None
    assert m(0.2) == pytest.approx(0.4) and m(0.5) == pytest.approx(0.6)
    assert m(0.35) == pytest.approx(0.5)  # linear between the samples
    assert m(0.9) == pytest.approx(0.8)  # beyond the peak: drawn where it peaked, not past it
    assert m(0.0) == pytest.approx(0.0)
    # the gap stands for open x (1 - closure): that product is mapped, the closure kept
    pressed = m.apply(MouthParams(open=0.8, width=0.3, closure=0.5))
    assert pressed.open * 0.5 == pytest.approx(m(0.4)) and (pressed.width, pressed.closure) == (0.3, 0.5)
    assert m.apply(MouthParams(open=0.5, closure=1.0)).open == 0.5  # shut lips: nothing to map
    # noise that reads lower at a wider opening does not fold the map back
    noisy = opening_map(drawn, np.array([0.0, 0.2, 0.15, 0.5, 0.7, 0.9]))
    assert noisy is not None and all(np.diff([noisy(a) for a in np.linspace(0, 1, 21)]) >= 0)
    # a read-back that starts above zero (a source with parted lips): asked 0 draws the first sample
    parted = opening_map(drawn, read + 0.1)
    assert parted is not None and parted(0.0) == pytest.approx(0.0) and parted(0.1) == pytest.approx(0.0)


def test_the_map_refuses_a_sweep_it_cannot_trust() -> None:
    drawn = np.array([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert opening_map(drawn, np.array([0.0, 0.02, 0.05, 0.08, 0.1, 0.12])) is None  # flat
    assert opening_map(drawn, np.array([0.0, np.nan, np.nan, np.nan, np.nan, 0.9])) is None  # face lost


def _read_back(landmarker: FaceLandmarker, face, opening) -> np.ndarray:
    out = []
    for asked in ASKED:
        found = landmarker.faces(render_mouth(face, MouthParams(open=opening(asked) if opening else asked)))
        assert found, "FaceMesh lost the face on the rendered frame"
        out.append(mouth_opening(found[0].landmarks) / OPENING_AT_FULL)
    return np.array(out)


@pytest.mark.parametrize("clip", ["pcavs_vox2_00086.mp4", "pcavs_vox2_00015.mp4"])  # closed, wide-open source
def test_calibrated_renders_read_back_nearer_the_opening_asked(clip: str) -> None:
    first = next(video_frames(shared_media("video", clip)))[1]
    with FaceLandmarker() as landmarker:
        face = prepare_face(first, landmarker.faces(first)[0].landmarks)
        opening = calibrate(face)
        assert opening is not None
        assert all(np.diff([opening(a) for a in np.linspace(0, 1, 21)]) >= 0)
        plain = _read_back(landmarker, face, None)
        calibrated = _read_back(landmarker, face, opening)
    asked = np.array(ASKED)
    plain_err, calibrated_err = np.abs(plain - asked).mean(), np.abs(calibrated - asked).mean()
    print(f"{clip}: mean |read - asked| {plain_err:.3f} uncalibrated, {calibrated_err:.3f} calibrated "
          f"(sweep of {len(SWEEP)})")
    assert calibrated_err < 0.6 * plain_err
    assert calibrated_err < 0.12
