"""The inbound audio prefetch (stream_server/inbound_audio.py): the server's session gets the
shorter buffer, and that buffer still hands packets on in order when the network swaps them."""

from __future__ import annotations

from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from stream_server.inbound_audio import AIORTC_AUDIO_PREFETCH, set_audio_prefetch


def packet(seq: int) -> RtpPacket:
    p = RtpPacket(payload_type=111, sequence_number=seq, timestamp=960 * seq, payload=bytes([seq]))
    p._data = p.payload  # what aiortc's receiver sets before buffering  # type: ignore[attr-defined]
    return p


def delivered(buffer: JitterBuffer, order: list[int]) -> list[tuple[int, int]]:
    """(packet added, frame timestamp handed on / 960) for each hand-on."""
    out = []
    for seq in order:
        _, frame = buffer.add(packet(seq))
        if frame is not None:
            out.append((seq, frame.timestamp // 960))
    return out


def test_a_prefetch_of_one_hands_each_packet_on_when_the_next_comes() -> None:
    assert delivered(JitterBuffer(16, prefetch=1), [0, 1, 2, 3]) == [(1, 0), (2, 1), (3, 2)]
    # aiortc's own: four packets later
    assert delivered(JitterBuffer(16, prefetch=AIORTC_AUDIO_PREFETCH), list(range(7))) == [(4, 0), (5, 1), (6, 2)]


def test_swapped_packets_still_leave_in_order() -> None:
    # aiortc hands on one packet per packet added, so each swap leaves one more packet waiting
    # (as with its own prefetch): the order holds, nothing is lost
    assert delivered(JitterBuffer(16, prefetch=1), [0, 2, 1, 4, 3, 5, 6]) == [(1, 0), (4, 1), (3, 2), (5, 3), (6, 4)]


async def test_the_receivers_buffer_is_replaced() -> None:
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("audio").receiver
        assert set_audio_prefetch(receiver, 1)  # fails if aiortc moved its buffer: the hook would be a no-op
        assert receiver._RTCRtpReceiver__jitter_buffer._prefetch == 1
    finally:
        await pc.close()
