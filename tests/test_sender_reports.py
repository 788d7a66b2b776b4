"""Placing camera frames on the microphone's timeline: RTP arithmetic and the frame choice."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from stream_server.audio_in import signed_ticks
from stream_server.clock import MediaClock
from stream_server.camera_in import CameraIn


def test_rtp_differences_cross_the_32_bit_wrap() -> None:
    assert signed_ticks(5, (1 << 32) - 5) == 10
    assert signed_ticks((1 << 32) - 5, 5) == -10
    assert signed_ticks(90000, 0) == 90000


def frame(index: int, rtp_origin: int = 0) -> av.VideoFrame:
    """Camera frame ``index``, taken at 25 fps, stamped as aiortc stamps it (90 kHz RTP time)."""
    made = av.VideoFrame.from_ndarray(np.full((8, 8, 3), index, np.uint8), format="rgb24")
    made.pts, made.time_base = (rtp_origin + index * 3600) % (1 << 32), Fraction(1, 90000)
    return made


def shown(chosen: av.VideoFrame | None) -> int:
    assert chosen is not None
    return int(chosen.to_ndarray(format="rgb24")[0, 0, 0])


def test_a_camera_frame_is_chosen_by_when_it_was_taken_once_reports_place_it() -> None:
    camera = CameraIn()
    # three frames taken 1/30 s apart, arriving late and bunched (as after a network stall)
    for n in range(3):
        camera.push(frame(n), arrival=10.0 + 0.001 * n, media_s=1.0 + n / 30)
    assert shown(camera.at(1.04, arrival_by=0.0)) == 1  # taken nearest to 1.04 s, whatever arrived when
    assert shown(camera.at(5.0, arrival_by=0.0)) == 2
    assert camera.by_reports == 3


def test_without_reports_the_frame_that_had_arrived_is_used() -> None:
    camera = CameraIn()
    for n in range(3):
        camera.push(frame(n), arrival=10.0 + n * 0.04, media_s=None)
    assert shown(camera.at(0.0, arrival_by=10.05)) == 1
    assert shown(camera.at(0.0, arrival_by=9.0)) == 0  # nothing had arrived: the oldest held


def test_without_reports_frames_delivered_in_a_burst_are_placed_by_their_rtp_times() -> None:
    """Frames 0-4 held up (a stall, or a server busy starting the session) arrive together at
    10.2 s; from frame 5 on they arrive on time, 10.0 s + 40 ms a frame. Each is placed where the
    quickest of them says it would have arrived, across the RTP timestamp's wrap."""
    camera = CameraIn()
    for n in range(8):
        camera.push(frame(n, rtp_origin=(1 << 32) - 7200), arrival=max(10.2, 10.0 + n * 0.04), media_s=None)
    assert shown(camera.at(0.0, arrival_by=10.05)) == 1  # by arrival alone: frame 0 (nothing had come yet)
    assert shown(camera.at(0.0, arrival_by=10.13)) == 3


def test_the_fast_mapping_follows_the_quickest_audio_at_once_after_a_backlog_at_the_start() -> None:
    """The first 300 ms of audio waited in a queue (the session was busy starting) and came in a
    burst at 10.3 s; the rest came on time. The camera mapping must not stay 300 ms late."""
    clock = MediaClock()
    for n in range(1, 41):  # 20 ms frames: audio up to n * 20 ms
        media_s = n * 0.02
        clock.observe(media_s, max(10.3, 10.0 + media_s))
    assert abs(clock.capture_wall(0.5) - 10.5) < 0.005

