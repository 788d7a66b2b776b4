"""Calibrating the `mesh` renderer's mouth opening on one portrait.

``MouthParams.open`` promises an inner-lip gap that FaceMesh reads as ``open`` x 0.35 eye
distances. The warp gets that gap geometrically, but what a tracker (or a viewer) sees depends on
the portrait: a mouth closing from an open source keeps its lips pressed together looking shut
until the gap is well open, and a small gap on a closed source reads larger than it is, because
of the dark interior drawn into it. So once per portrait the renderer draws a sweep of openings,
reads each back with FaceMesh, and maps every later ``open`` to the one whose frame reads as
asked. Openings the portrait cannot show (the read-back stops rising) are capped where it peaks.
Camera frames are not calibrated: each is a new face, and a sweep costs ~0.5 s.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from engines.face import FaceLandmarker, mouth_opening
from engines.mesh.prepare import PreparedFace
from engines.mesh.render import render_mouth
from engines.mouth import OPENING_AT_FULL, MouthParams

SWEEP = np.round(np.linspace(0.0, 1.2, 13), 3)  # the openings drawn (open units)
MIN_READ_RANGE = 0.3  # a sweep whose read-back spans less (open units) is not trusted


@dataclass(frozen=True)
class OpeningMap:
    """``open`` asked for -> ``open`` to draw, piecewise linear."""

    asked: np.ndarray  # increasing
    drawn: np.ndarray

    def __call__(self, open_: float) -> float:
        return float(np.interp(open_, self.asked, self.drawn))

    def apply(self, params: MouthParams) -> MouthParams:
        """``params`` with the opening to draw. The lips' gap is ``open`` x (1 - ``closure``), so
        that product is what is mapped; the closure itself (lips pressed thinner) stays."""
        kept = 1.0 - params.closure
        if kept <= 1e-3:
            return params
        return replace(params, open=self(params.open * kept) / kept)


def opening_map(drawn: np.ndarray, read: np.ndarray) -> OpeningMap | None:
    """The map from the read-back ``read`` (open units, NaN where no face was found) of the frames
    drawn at ``drawn``; None when the read-back is too sparse or flat to say anything."""
    ok = ~np.isnan(read)
    if ok.sum() < len(drawn) // 2:
        return None
    x, y = drawn[ok], np.maximum.accumulate(read[ok])  # reading noise must not fold the map back
    if y[-1] - y[0] < MIN_READ_RANGE:
        return None
    rising = np.concatenate([[True], np.diff(y) > 1e-6])  # first point of each plateau
    x, y = x[rising], y[rising]
    # asked openings below the smallest reading draw the smallest opening; above the largest, the
    # opening where the read-back peaked (np.interp clamps at both ends)
    asked = np.concatenate([[0.0], y]) if y[0] > 0 else y
    drawn_at = np.concatenate([[x[0]], x]) if y[0] > 0 else x
    return OpeningMap(asked, drawn_at)


def calibrate(face: PreparedFace) -> OpeningMap | None:
    """Draw ``SWEEP`` on ``face``, read each frame back, and return the map (None: uncalibrated)."""
    read = np.full(len(SWEEP), np.nan)
    with FaceLandmarker() as landmarker:
        for i, open_ in enumerate(SWEEP):
            found = landmarker.faces(render_mouth(face, MouthParams(open=float(open_))))
            if found:
                read[i] = mouth_opening(found[0].landmarks) / OPENING_AT_FULL
    return opening_map(SWEEP, read)
