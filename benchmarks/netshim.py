"""A packet-level shim between two WebRTC peers on this machine: a UDP relay that loses, delays
and reorders packets, or cuts the path outright.

``tc netem`` needs the sch_netem kernel module, which containers often lack, so the faults are
made here instead. Each peer is told (by rewriting the ICE candidates in the offer and the
answer) that the other one lives at a relay socket, so every packet in both directions, STUN,
DTLS, RTP and RTCP alike, goes through the relay and takes its faults:

    client  <->  [A] relay [B]  <->  server
    the server only knows B as the client's address, the client only knows A as the server's
"""

from __future__ import annotations

import asyncio
import random
import re
from dataclasses import dataclass, field

CANDIDATE = re.compile(r"^a=candidate:(\S+) (\d) (udp|UDP) (\d+) (\S+) (\d+) typ (\w+)")


@dataclass
class Faults:
    loss: float = 0.0  # probability that a packet is dropped
    delay_s: float = 0.0  # fixed one-way delay
    jitter_s: float = 0.0  # extra delay, uniform in [0, jitter_s): packets get reordered, as with netem
    cut: bool = False  # drop everything (a network cut, or a peer that vanished)


@dataclass
class RelayCounts:
    forwarded: int = 0
    dropped: int = 0
    by_direction: dict[str, int] = field(default_factory=lambda: {"to_server": 0, "to_client": 0})


def first_ipv4_udp_candidate(sdp: str) -> tuple[str, int]:
    for line in sdp.splitlines():
        match = CANDIDATE.match(line)
        if match and match.group(3).lower() == "udp" and match.group(2) == "1" and ":" not in match.group(5):
            return match.group(5), int(match.group(6))
    raise ValueError("the SDP has no IPv4 UDP candidate")


def replace_candidates(sdp: str, address: tuple[str, int]) -> str:
    """Every media section gets one host candidate, ``address``, instead of its own."""
    out: list[str] = []
    placed = False
    for line in sdp.splitlines():
        if line.startswith("m="):
            placed = False
        if line.startswith("a=candidate:"):
            if not placed:
                out.append(f"a=candidate:relay 1 udp 2130706431 {address[0]} {address[1]} typ host")
                placed = True
            continue
        out.append(line)
    return "\r\n".join(out) + "\r\n"


class _Side(asyncio.DatagramProtocol):
    def __init__(self, relay: "UdpRelay", direction: str) -> None:
        self.relay = relay
        self.direction = direction
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.relay._forward(self.direction, data)


class UdpRelay:
    """Relays one client and one server; ``faults`` may be changed at any time."""

    def __init__(self, faults: Faults | None = None, seed: int = 0, host: str | None = None) -> None:
        self.faults = faults or Faults()
        self.counts = RelayCounts()
        self._random = random.Random(seed)
        self._host = host
        self._client_side: _Side | None = None  # socket A: the client sends to it
        self._server_side: _Side | None = None  # socket B: the server sends to it
        self._client: tuple[str, int] | None = None
        self._server: tuple[str, int] | None = None

    async def offer(self, sdp: str) -> str:
        """Bind the relay on the client's address family and rewrite the client's offer."""
        self._client = first_ipv4_udp_candidate(sdp)
        host = self._host or self._client[0]
        loop = asyncio.get_running_loop()
        _, self._client_side = await loop.create_datagram_endpoint(lambda: _Side(self, "to_server"), local_addr=(host, 0))
        _, self._server_side = await loop.create_datagram_endpoint(lambda: _Side(self, "to_client"), local_addr=(host, 0))
        return replace_candidates(sdp, self._address(self._server_side))

    def answer(self, sdp: str) -> str:
        """Rewrite the server's answer so the client sends to the relay."""
        self._server = first_ipv4_udp_candidate(sdp)
        assert self._client_side is not None
        return replace_candidates(sdp, self._address(self._client_side))

    @staticmethod
    def _address(side: _Side) -> tuple[str, int]:
        assert side.transport is not None
        host, port = side.transport.get_extra_info("sockname")[:2]
        return host, port

    def _forward(self, direction: str, data: bytes) -> None:
        faults = self.faults
        if faults.cut or (faults.loss and self._random.random() < faults.loss):
            self.counts.dropped += 1
            return
        if direction == "to_server":
            out, target = self._server_side, self._server
        else:
            out, target = self._client_side, self._client
        if out is None or out.transport is None or target is None:
            return
        self.counts.forwarded += 1
        self.counts.by_direction[direction] += 1
        delay = faults.delay_s + (self._random.random() * faults.jitter_s if faults.jitter_s else 0.0)
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._send, out, data, target)
        else:
            self._send(out, data, target)

    @staticmethod
    def _send(side: _Side, data: bytes, target: tuple[str, int]) -> None:
        if side.transport is not None and not side.transport.is_closing():
            side.transport.sendto(data, target)

    def close(self) -> None:
        for side in (self._client_side, self._server_side):
            if side is not None and side.transport is not None:
                side.transport.close()
