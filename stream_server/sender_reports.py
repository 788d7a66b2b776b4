"""The peer's RTCP sender reports: when, on the peer's own wall clock, an inbound frame was taken.

Each report pairs an RTP timestamp of one inbound stream with the sender's NTP time (RFC 3550,
section 6.4.1). Reports of the camera and of the microphone share that NTP clock, so they place a
camera frame on the microphone's timeline exactly, whatever each stream met on the way: this is
how browsers keep lips and voice together, and it does not shift when the network delays one
stream more than the other (arrival times do).

aiortc hands decoded frames over with ``pts`` = RTP timestamp - the timestamp of the first frame
it decoded, so mapping a pts back to RTP needs that first timestamp; it is read from the
receiver's timestamp mapper. If a future aiortc hides it, the reports are simply not used.
"""

from __future__ import annotations

from typing import Any

from aiortc.rtp import RtcpSrPacket

from stream_server.audio_in import RTP_WRAP, signed_ticks

NTP_FRACTION = float(1 << 32)


def pts_origin(receiver: Any) -> int | None:
    """The RTP timestamp at which aiortc's decoded pts are 0 for ``receiver`` (None before its first frame)."""
    mapper = getattr(receiver, "_RTCRtpReceiver__timestamp_mapper", None)
    origin = getattr(mapper, "_origin", None)
    return None if origin is None else int(origin) % RTP_WRAP


class SenderReports:
    """The latest sender report of one inbound stream, hooked into its aiortc receiver."""

    def __init__(self, receiver: Any) -> None:
        self._receiver = receiver
        self.latest: tuple[float, int] | None = None  # (sender NTP seconds, RTP timestamp)
        self.count = 0
        handle_rtcp = receiver._handle_rtcp_packet

        async def on_rtcp(packet: Any) -> None:
            if isinstance(packet, RtcpSrPacket):
                info = packet.sender_info
                self.latest = (info.ntp_timestamp / NTP_FRACTION, int(info.rtp_timestamp))
                self.count += 1
            await handle_rtcp(packet)

        receiver._handle_rtcp_packet = on_rtcp

    def sender_time(self, pts: int, clock_rate: int) -> float | None:
        """The sender's wall time (NTP seconds) of the frame with decoded ``pts``, or None
        until the first report has arrived."""
        origin = pts_origin(self._receiver)
        if self.latest is None or origin is None:
            return None
        ntp, rtp = self.latest
        return ntp + signed_ticks((origin + pts) % RTP_WRAP, rtp) / clock_rate

    def pts_at(self, sender_s: float, clock_rate: int) -> int | None:
        """The decoded pts (mod 2**32) this stream had at the sender's wall time ``sender_s``."""
        origin = pts_origin(self._receiver)
        if self.latest is None or origin is None:
            return None
        ntp, rtp = self.latest
        return (rtp + round((sender_s - ntp) * clock_rate) - origin) % RTP_WRAP
