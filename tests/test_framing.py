"""A portrait framed on its face: the crop, the option on every path, and what it does to the
bundled portrait (its face fills a small part of the picture, so its mouth was a few pixels wide
on the page)."""

from __future__ import annotations

import numpy as np
import pytest

from engines.face import FaceLandmarker, face_scale
from engines.images import face_window, fit_cover
from stream_server.avatars import AvatarLibrary
from stream_server.options import OptionError, framing_option


def test_the_window_centres_the_face_at_the_outputs_aspect_inside_the_picture() -> None:
    left, top, right, bottom = face_window((1000, 800), (450, 300, 550, 420), 640, 360)
    assert (right - left) / (bottom - top) == pytest.approx(640 / 360, abs=0.01)
    assert bottom - top == pytest.approx(120 / 0.4, abs=1)  # the face 40 % of the height
    assert left < 450 and right > 550 and top < 300 and bottom > 420
    assert abs((left + right) / 2 - 500) <= 1
    # a face at the picture's edge: the window stays inside
    left, top, right, bottom = face_window((1000, 800), (0, 0, 100, 120), 512, 512)
    assert (left, top) == (0, 0) and right <= 1000 and bottom <= 800


def test_a_face_that_fills_the_picture_keeps_the_whole_picture() -> None:
    assert face_window((512, 512), (100, 60, 420, 480), 512, 512) == (0, 0, 512, 512)


def test_the_bundled_portrait_framed_shows_a_larger_face() -> None:
    library = AvatarLibrary()
    whole = library.framed("astronaut", "whole", 512, 512)
    face = library.framed("astronaut", "face", 512, 512)
    assert whole is not None and face is not None and face.shape == whole.shape == (512, 512, 3)
    assert np.array_equal(whole, fit_cover(library.image("astronaut"), 512, 512))
    with FaceLandmarker() as landmarker:
        eyes_whole = face_scale(landmarker.faces(whole)[0].landmarks)
        eyes_face = face_scale(landmarker.faces(face)[0].landmarks)
    assert eyes_face > 1.5 * eyes_whole, (eyes_whole, eyes_face)
    # at 128 x 128 the whole picture's face is too small for mesh (< 24 px between the eyes); framed it is not
    with FaceLandmarker() as landmarker:
        small = landmarker.faces(library.framed("astronaut", "face", 128, 128))
    assert small and face_scale(small[0].landmarks) >= 24


def test_the_camera_and_a_picture_without_a_face_are_left_as_they_are() -> None:
    library = AvatarLibrary()
    assert library.framed("camera", "face", 320, 240) is None
    name, _ = library.add_upload("grey", np.full((300, 400, 3), 128, np.uint8))
    assert np.array_equal(library.framed(name, "face", 200, 150), fit_cover(library.image(name), 200, 150))


@pytest.mark.parametrize("value", ["Face", "crop", "", None, 1])
def test_a_bad_framing_is_refused_with_the_valid_values(value: object) -> None:
    with pytest.raises(OptionError) as error:
        framing_option(value)
    assert error.value.valid == ["face", "whole"] and "framing must be one of face, whole" in str(error.value)

