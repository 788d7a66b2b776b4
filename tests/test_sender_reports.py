"""Placing camera frames on the microphone's timeline: RTP arithmetic and the frame choice."""

from __future__ import annotations

import av
import numpy as np

from stream_server.audio_in import signed_ticks
from stream_server.session import CameraIn


def test_rtp_differences_cross_the_32_bit_wrap() -> None:
    assert signed_ticks(5, (1 << 32) - 5) == 10
    assert signed_ticks((1 << 32) - 5, 5) == -10
    assert signed_ticks(90000, 0) == 90000


def frame(index: int) -> av.VideoFrame:
    made = av.VideoFrame.from_ndarray(np.full((8, 8, 3), index, np.uint8), format="rgb24")
    made.pts = index
    return made


def test_a_camera_frame_is_chosen_by_when_it_was_taken_once_reports_place_it() -> None:
    camera = CameraIn()
    # three frames taken 1/30 s apart, arriving late and bunched (as after a network stall)
    for n in range(3):
        camera.push(frame(n), arrival=10.0 + 0.001 * n, media_s=1.0 + n / 30)
    assert camera.at(1.04, arrival_by=0.0).pts == 1  # taken nearest to 1.04 s, whatever arrived when
    assert camera.at(5.0, arrival_by=0.0).pts == 2
    assert camera.by_reports == 3


def test_without_reports_the_frame_that_had_arrived_is_used() -> None:
    camera = CameraIn()
    for n in range(3):
        camera.push(frame(n), arrival=10.0 + n * 0.04, media_s=None)
    assert camera.at(0.0, arrival_by=10.05).pts == 1
    assert camera.at(0.0, arrival_by=9.0).pts == 0  # nothing had arrived: the oldest held
