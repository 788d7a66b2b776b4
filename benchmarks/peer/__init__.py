"""A Python aiortc peer (tests and benchmarks) that sends a real clip to the server and records what comes back.

The clip's video frames are stamped with their index as a row of black and white blocks, so
the receiver knows which source instant each returned frame shows; returned audio is matched
to the clip's audio by cross-correlation. Together they give the A/V offset at the receiver.

Modules: ``stamps`` (the frame stamps), ``tracks`` (the outgoing test tracks), ``receive`` (the
recording and its measures), ``session`` (sessions with ``/offer``), ``whip`` (WHIP / WHEP).
"""

from benchmarks.peer.receive import Received, SenderTime, av_offsets, av_offsets_timed, output_fps
from benchmarks.peer.session import loop_clip, stream_clip, stream_microphone
from benchmarks.peer.stamps import BLOCK, CODE_BITS, read_stamp, stamp
from benchmarks.peer.tracks import ArrayMicrophone, PacedAudio, StampedVideo
from benchmarks.peer.whip import whep_play, whip_publish

__all__ = [
    "BLOCK", "CODE_BITS", "ArrayMicrophone", "PacedAudio", "Received", "SenderTime", "StampedVideo",
    "av_offsets", "av_offsets_timed", "loop_clip", "output_fps", "read_stamp", "stamp", "stream_clip",
    "stream_microphone", "whep_play", "whip_publish",
]
