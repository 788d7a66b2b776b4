"""Scoring an audio-to-mouth model on the real clips: mouth-motion agreement per clip.

A model's ``open`` output per video frame is compared with the FaceMesh inner-lip opening the clip
shows, by :func:`engines.lipsync_measures.agreement` (the one definition the quality benchmark
uses too). Shared by the blend fitting (``blend``), the training (``train``) and the evaluation
CLI (``evaluate``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from engines import features
from engines.audio2mouth.clips import Clip
from engines.audio2mouth.model import AudioToMouth, mel_windows
from engines.lipsync_measures import agreement

Scores = dict[str, tuple[float, int, float]]  # clip name -> (r at lag 0, best lag, r at the best lag)


def clip_windows(clip: Clip, context_s: float, lookahead_s: float) -> np.ndarray:
    """The server's log-mel windows of a clip's audio, one per video frame."""
    mel = features.LogMel().frames(clip.pcm)
    return mel_windows(mel, clip.times, context_s, lookahead_s)


def mel_loudness(pcm16k: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Frame loudness, the baseline predictor: log energy of the server's log-mel frames in a 40 ms
    window centred on each video frame time."""
    windows = mel_windows(features.LogMel().frames(pcm16k), times, 0.02, 0.02).astype(np.float64)
    return np.log(np.exp(windows).sum(axis=2).mean(axis=1) + 1e-10)


def speaker_mean(rows: list[dict], key: str) -> float:
    """Mean of ``row[key]`` over speakers: each speaker's rows (``row["speaker"]``) averaged first, so a
    speaker with many clips counts once."""
    speakers: dict[str, list[float]] = {}
    for row in rows:
        speakers.setdefault(row["speaker"], []).append(row[key])
    return float(np.mean([np.mean(v) for v in speakers.values()]))


def model_scores(model: AudioToMouth, clips: list[Clip]) -> Scores:
    """Agreement of the model's ``open`` with each clip's real lip opening."""
    out = {}
    for clip in clips:
        pred = model.predict_batch(clip_windows(clip, model.context_s, model.lookahead_s))[:, 0]
        out[clip.name] = agreement(pred, clip.opening)
    return out


def summarise(name: str, results: Scores, log: Callable[[str], None] = print) -> dict:
    """Log the mean and per-clip figures; the same as a JSON-ready dict."""
    r0 = np.mean([v[0] for v in results.values()])
    lag = np.mean([v[1] for v in results.values()])
    log(f"{name}: mean r(lag 0) = {r0:.3f}, mean best lag = {lag:+.2f} frames")
    for clip, (r, l, rb) in results.items():
        log(f"    {clip:32s} r0={r:+.3f} best lag={l:+d} (r={rb:+.3f})")
    return {"mean_r": float(r0), "mean_best_lag": float(lag),
            "clips": {k: {"r": v[0], "best_lag": v[1], "r_best": v[2]} for k, v in results.items()}}
