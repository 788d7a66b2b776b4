"""Real talking clips (``../shared/testdata/video``, read in place, never copied) for the
audio-to-mouth model: the mouth track FaceMesh measures on each frame, with the clip's own audio as
input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines import features

SR = features.SAMPLE_RATE

VIDEO_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "testdata" / "video"


@dataclass
class Clip:
    """A real talking clip: its audio, and the FaceMesh mouth track per video frame."""

    name: str
    pcm: np.ndarray
    times: np.ndarray  # video frame times, s
    opening: np.ndarray  # engines.face.mouth_opening per frame
    width: np.ndarray  # mouth-corner distance / eye distance per frame


def real_clips(video_dir: Path = VIDEO_DIR, cache: Path | None = None, log=print) -> list[Clip]:
    """Mouth tracks of every clip with audio in ``video_dir`` (cached as .npz in ``cache``, if given)."""
    from engines import media_io
    from engines.face import MOUTH_CORNERS, FaceLandmarker, face_scale, mouth_opening

    paths = sorted(p for p in video_dir.glob("*.mp4"))
    if not paths:
        raise SystemExit(f"no clips in {video_dir}")
    clips = []
    for path in paths:
        cached = cache / f"{path.stem}.npz" if cache else None
        if cached is not None and cached.exists():
            d = np.load(cached)
            clips.append(Clip(path.stem, d["pcm"], d["times"], d["opening"], d["width"]))
            continue
        try:
            pcm = media_io.load_audio(path, SR)
        except ValueError:
            log(f"  {path.name}: no audio, skipped")
            continue
        times, opening, width = [], [], []
        with FaceLandmarker(tracking=True) as landmarker:
            for t, rgb in media_io.video_frames(path):
                faces = landmarker.faces(rgb)
                times.append(t)
                if faces:
                    lm = faces[0].landmarks
                    opening.append(mouth_opening(lm))
                    a, b = MOUTH_CORNERS
                    width.append(float(np.linalg.norm(lm[a, :2] - lm[b, :2])) / max(face_scale(lm), 1e-6))
                else:
                    opening.append(np.nan)
                    width.append(np.nan)
        clip = Clip(path.stem, pcm, np.array(times), np.array(opening), np.array(width))
        if cached is not None:
            cache.mkdir(parents=True, exist_ok=True)
            np.savez(cached, pcm=clip.pcm, times=clip.times, opening=clip.opening, width=clip.width)
        log(f"  {path.name}: {len(times)} frames, {np.isnan(clip.opening).sum()} without a face")
        clips.append(clip)
    return clips


def clip_targets(clip: Clip) -> tuple[np.ndarray, np.ndarray]:
    """(targets, mask) per video frame: open = opening / 0.35; width centred on the clip's median."""
    from engines.mouth import OPENING_AT_FULL

    open_ = np.clip(clip.opening / OPENING_AT_FULL, 0, 1)
    width = np.clip((clip.width - np.nanmedian(clip.width)) * 8.0, -1, 1)
    targets = np.stack([open_, width, np.zeros_like(open_)], 1).astype(np.float32)
    mask = np.stack([np.isfinite(open_), np.isfinite(width) * 0.3, np.zeros_like(open_)], 1).astype(np.float32)
    return np.nan_to_num(targets), mask
