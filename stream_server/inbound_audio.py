"""How many audio packets aiortc holds before it hands the oldest one on.

aiortc's receiver keeps an audio jitter buffer with a prefetch of 4: a packet is decoded only
once 4 later ones have arrived, 80 ms of Opus at 20 ms a packet, before the server sees any of
it. The prefetch does nothing for reordering or loss: a missing packet holds the buffer at that
hole whatever the prefetch (until it comes, or the buffer's 16 packets overflow), so packets
still leave in order. A prefetch of 1 (the next packet shows the oldest is whole) costs 20 ms.
Measured in the browser: glass-to-glass p50 220 -> 161 ms (README "Glass-to-glass"). A camera
avatar's slots wait for their camera frame (``LivePipeline.input_horizon``), whose path is then the
slower one, so the shorter buffer cannot put its sound ahead of its pictures.
"""

from __future__ import annotations

import logging
from typing import Any

from aiortc.jitterbuffer import JitterBuffer

log = logging.getLogger(__name__)
AIORTC_AUDIO_PREFETCH = 4  # what aiortc 1.x sets
DEFAULT_AUDIO_PREFETCH = 1
_BUFFER = "_RTCRtpReceiver__jitter_buffer"  # private: checked, and left alone if it moves


def set_audio_prefetch(receiver: Any, packets: int) -> bool:
    """Give an audio ``receiver`` (aiortc's RTCRtpReceiver, before any packet) a jitter buffer
    that hands a packet on once ``packets`` later ones have come; False if aiortc has changed."""
    current = getattr(receiver, _BUFFER, None)
    if not isinstance(current, JitterBuffer):
        log.warning("aiortc's audio jitter buffer has moved: its prefetch of %d is kept", AIORTC_AUDIO_PREFETCH)
        return False
    setattr(receiver, _BUFFER, JitterBuffer(capacity=current.capacity, prefetch=packets))
    return True
