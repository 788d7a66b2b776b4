"""Peer liveness: when the last RTP or RTCP packet came from the peer.

A peer that only receives still sends RTCP receiver reports about once a second, so silence
means it is gone. aiortc has no hook for this, so the DTLS transports' packet handlers are
wrapped on the instance (and unwrapped again on release, back to the class's own methods).
"""

from __future__ import annotations

import time
from typing import Any

from aiortc import RTCPeerConnection


class PacketListener:
    def __init__(self) -> None:
        self.last_heard = time.monotonic()
        self._transports: list[Any] = []

    def listen(self, pc: RTCPeerConnection) -> None:
        transports = {id(t.receiver.transport): t.receiver.transport for t in pc.getTransceivers()}
        self._transports = list(transports.values())
        for transport in self._transports:
            on_rtp, on_rtcp = transport._handle_rtp_data, transport._handle_rtcp_data

            async def heard_rtp(data: bytes, arrival_time_ms: int, on_rtp: Any = on_rtp) -> None:
                self.last_heard = time.monotonic()
                await on_rtp(data, arrival_time_ms=arrival_time_ms)

            async def heard_rtcp(data: bytes, on_rtcp: Any = on_rtcp) -> None:
                self.last_heard = time.monotonic()
                await on_rtcp(data)

            transport._handle_rtp_data, transport._handle_rtcp_data = heard_rtp, heard_rtcp

    def quiet_s(self) -> float:
        return time.monotonic() - self.last_heard

    def release(self) -> None:
        for transport in self._transports:
            for name in ("_handle_rtp_data", "_handle_rtcp_data"):
                transport.__dict__.pop(name, None)  # back to the class's own methods
        self._transports = []
