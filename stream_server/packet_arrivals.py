"""When each inbound frame's first RTP packet reached the server, before aiortc's jitter buffers.

aiortc hands a frame over only after its jitter buffer lets it go: audio once ``prefetch`` later
packets have come (``inbound_audio.py``), video once the next frame's first packet shows the frame
is whole, and then after decoding. Those holds differ between the two streams and change with the
audio prefetch, so camera frames placed against audio by *delivery* time shift with them (a
prefetch of 1 left a camera avatar's first seconds 68 ms out before the sender reports came).
Placed by when their packets arrived, both streams meet only the network.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from stream_server.audio_in import RTP_WRAP
from stream_server.sender_reports import pts_origin

HELD = 512  # timestamps remembered: seconds of 20 ms audio packets or of video frames, far more than any jitter buffer holds


class PacketArrivals:
    """The wall time (``time.monotonic``) the first packet of each recent RTP timestamp of one
    inbound stream arrived, hooked into its aiortc receiver."""

    def __init__(self, receiver: Any) -> None:
        self._receiver = receiver
        self._first: dict[int, float] = {}
        self._order: collections.deque[int] = collections.deque()
        handle_rtp = receiver._handle_rtp_packet

        async def on_rtp(packet: Any, arrival_time_ms: int) -> None:
            if packet.timestamp not in self._first:
                self._first[packet.timestamp] = time.monotonic()
                self._order.append(packet.timestamp)
                if len(self._order) > HELD:
                    del self._first[self._order.popleft()]
            await handle_rtp(packet, arrival_time_ms=arrival_time_ms)

        receiver._handle_rtp_packet = on_rtp

    def arrival_of(self, pts: int | None) -> float | None:
        """When the first packet of the decoded frame with ``pts`` arrived (None if unknown)."""
        origin = pts_origin(self._receiver)
        if pts is None or origin is None:
            return None
        return self._first.get((origin + pts) % RTP_WRAP)

    def release(self) -> None:
        self._receiver.__dict__.pop("_handle_rtp_packet", None)  # back to the class's own method
        self._first.clear()
        self._order.clear()
