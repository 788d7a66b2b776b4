"""Mouth parameters: what the audio-to-mouth model predicts and the renderers draw."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class MouthParams:
    """One frame's mouth shape.

    open:    jaw and inner-lip opening, 0 (closed) to 1 (wide open, as in a shouted "ah").
             Scaled so that 1.0 is an inner-lip gap of 0.35 x the outer-eye-corner distance.
    width:   lip width against rounding, -1 (rounded, "oo") to +1 (spread, "ee"); 0 is neutral.
    closure: lips pressed together, 0 to 1 (1 for the hold of "p", "b", "m").
    """

    open: float = 0.0
    width: float = 0.0
    closure: float = 0.0

    def as_array(self) -> np.ndarray:
        return np.array([self.open, self.width, self.closure], np.float32)

    @classmethod
    def from_array(cls, values: np.ndarray) -> "MouthParams":
        open_, width, closure = (float(v) for v in values[:3])
        return cls(float(np.clip(open_, 0, 1)), float(np.clip(width, -1, 1)), float(np.clip(closure, 0, 1)))

    def with_gain(self, gain: float) -> "MouthParams":
        """The opening scaled by ``gain`` about the closed mouth (``Expression.mouth_gain``), at
        most 1. A closed mouth (silence) stays closed, and so does a bilabial hold: ``closure``
        closes the lips whatever the opening. Width and closure are kept: gain is how far the
        mouth opens, not which shape it makes."""
        if gain == 1.0:
            return self
        return replace(self, open=float(np.clip(self.open * gain, 0.0, 1.0)))


OPENING_AT_FULL = 0.35  # mouth_opening() value that open = 1.0 stands for
