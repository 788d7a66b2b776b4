"""A ring buffer of samples keyed by absolute sample index (media time x sample rate).

Writes land at the index their timestamp says, so a lost packet leaves silence and never shifts
the time of what follows. Reads of samples that never arrived, or fell out of the ring, come back
as silence (the ring's ``fill`` value).
"""

from __future__ import annotations

import numpy as np


class SampleRing:
    def __init__(
        self, capacity: int, dtype: np.dtype | type = np.float32, width: int = 0, fill: float = 0.0
    ) -> None:
        """``width`` > 0 stores rows of that many values per index (used for mel frames);
        ``fill`` is what reads return where nothing was received (silence)."""
        shape = (capacity, width) if width else (capacity,)
        self.capacity = capacity
        self.fill = fill
        self._data = np.full(shape, fill, dtype)
        self._written = np.zeros(capacity, bool)
        self._end = 0  # one past the highest index written so far

    @property
    def end(self) -> int:
        """One past the highest index written so far (0 before any write)."""
        return self._end

    @property
    def start(self) -> int:
        """The oldest index still held."""
        return max(0, self._end - self.capacity)

    def write(self, index: int, values: np.ndarray) -> None:
        """Store ``values`` at ``index``..; indices skipped since the last write become zeros."""
        count = len(values)
        if count == 0:
            return
        if index + count <= self._end - self.capacity:
            return  # entirely older than what the ring holds
        if index > self._end:
            self._clear(self._end, index)  # a gap: what was never received is silence
        if count > self.capacity:
            values, index = values[-self.capacity :], index + count - self.capacity
            count = self.capacity
        positions = np.arange(index, index + count) % self.capacity
        self._data[positions] = values
        self._written[positions] = True
        self._end = max(self._end, index + count)

    def _clear(self, first: int, stop: int) -> None:
        first = max(first, stop - self.capacity)
        if stop <= first:
            return
        positions = np.arange(first, stop) % self.capacity
        self._data[positions] = self.fill
        self._written[positions] = False

    def read(self, index: int, count: int) -> np.ndarray:
        """``count`` values from ``index``; ``fill`` where nothing (or nothing still held) was written."""
        out = np.full((count,) + self._data.shape[1:], self.fill, self._data.dtype)
        first = max(index, self.start)
        stop = min(index + count, self._end)
        if stop > first:
            out[first - index : stop - index] = self._data[np.arange(first, stop) % self.capacity]
        return out

    def has(self, index: int) -> bool:
        return self.start <= index < self._end and bool(self._written[index % self.capacity])
