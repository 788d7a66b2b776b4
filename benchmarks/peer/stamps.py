"""Frame stamps: the clip's video frames are stamped with their index as a row of black and white
blocks, so the receiver knows which source instant each returned frame shows.
"""

from __future__ import annotations

import numpy as np

CODE_BITS = 14  # frame numbers up to 16383: 10.9 min at 25 fps
BLOCK = 16  # marker block side in pixels (14 blocks fit a 224-pixel frame)


def stamp(rgb: np.ndarray, index: int) -> np.ndarray:
    """Write ``index`` as CODE_BITS blocks along the top of the frame (white = 1)."""
    out = rgb.copy()
    for bit in range(CODE_BITS):
        value = 255 if (index >> bit) & 1 else 0
        out[0:BLOCK, bit * BLOCK : (bit + 1) * BLOCK] = value
    return out


def read_stamp(rgb: np.ndarray) -> int:
    """The frame index stamped on ``rgb``, or -1 if a block is neither black nor white (a blend
    of two stamped frames, as an interpolated frame is)."""
    index = 0
    for bit in range(CODE_BITS):
        level = rgb[4 : BLOCK - 4, bit * BLOCK + 4 : (bit + 1) * BLOCK - 4].mean()
        if 64 < level < 192:
            return -1
        if level > 128:
            index |= 1 << bit
    return index
