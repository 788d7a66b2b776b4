"""A camera avatar's timing: when its frames' packets came (stream_server/packet_arrivals.py)
and a media clock that waits for the camera when the camera's path is the slower one."""

from __future__ import annotations

from aiortc import RTCPeerConnection
from aiortc.rtp import RtpPacket

from stream_server.clock import MediaClock
from stream_server.packet_arrivals import PacketArrivals

AUDIO_FRAME_S = 0.02


async def test_the_first_packet_of_each_timestamp_is_remembered_and_found_by_pts() -> None:
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("video").receiver
        arrivals = PacketArrivals(receiver)
        for timestamp in (90_000, 90_000, 93_000):  # two packets of one frame, then the next frame
            await receiver._handle_rtp_packet(RtpPacket(payload_type=96, timestamp=timestamp), arrival_time_ms=0)
        assert arrivals.arrival_of(0) is None  # aiortc has decoded nothing yet: no pts origin
        receiver._RTCRtpReceiver__timestamp_mapper.map(90_000)  # what aiortc does with the first frame
        first, second = arrivals.arrival_of(0), arrivals.arrival_of(3_000)
        assert first is not None and second is not None and first <= second
        assert arrivals.arrival_of(6_000) is None
        arrivals.release()
        assert "_handle_rtp_packet" not in receiver.__dict__
    finally:
        await pc.close()


def feed_audio(clock: MediaClock, seconds: float, delay_s: float, start: float = 100.0) -> float:
    media = 0.0
    while media < seconds:
        media += AUDIO_FRAME_S
        clock.observe(media, start + media + delay_s, start + media + delay_s - 0.015)
    return media


def test_the_clock_waits_for_a_camera_that_is_slower_than_the_microphone() -> None:
    audio_only = MediaClock()
    feed_audio(audio_only, 3.0, 0.030)
    clock = MediaClock()
    media = 0.0
    while media < 3.0:  # camera frames come 70 ms after they were taken, the audio 30 ms after
        media += AUDIO_FRAME_S
        clock.observe(media, 100.0 + media + 0.030)
        clock.observe_camera(media, 100.0 + media + 0.070)
    assert audio_only.origin is not None and clock.origin is not None
    assert abs(audio_only.origin - 100.030) < 1e-6
    assert abs(clock.origin - 100.070) < 1e-6  # moved over by at most 1 ms per audio frame
    # a camera quicker than the microphone changes nothing
    quick = MediaClock()
    media = 0.0
    while media < 3.0:
        media += AUDIO_FRAME_S
        quick.observe(media, 100.0 + media + 0.030)
        quick.observe_camera(media, 100.0 + media + 0.010)
    assert quick.origin is not None and abs(quick.origin - 100.030) < 1e-6


def test_camera_frames_are_placed_by_packet_arrival_once_audio_packets_give_it() -> None:
    clock = MediaClock()
    feed_audio(clock, 1.0, 0.030)
    assert clock.fast_origin is not None and clock.camera_origin is not None
    assert abs(clock.fast_origin - 100.030) < 1e-6
    assert abs(clock.camera_origin - 100.015) < 1e-6  # the packets came 15 ms before aiortc let them go
