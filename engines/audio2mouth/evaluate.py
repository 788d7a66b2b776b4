"""Mouth-motion agreement (DESIGN.md) of audio-only predictors on the real clips.

Per clip: the predicted ``open`` per video frame against the FaceMesh inner-lip opening, scored by
:func:`engines.lipsync_measures.agreement` (both smoothed with a 3-frame moving average; Pearson r
at lag 0, and the lag within +-5 frames with the best r; positive lag: the prediction comes *late*).

    python -m engines.audio2mouth.evaluate            # baselines, the committed network alone, and the
                                                      # committed method (network + ridge blend) scored
                                                      # by nested leave-one-clip-out
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from engines.audio2mouth import blend
from engines.audio2mouth.clips import Clip, real_clips
from engines.audio2mouth.model import AudioToMouth
from engines.audio2mouth.scores import Scores, clip_windows, mel_loudness, model_scores, summarise
from engines.lipsync_measures import agreement


def loudness_baseline(clips: list[Clip]) -> Scores:
    """Log energy of the mel frames in a 40 ms window centred on each video frame."""
    out = {}
    for clip in clips:
        out[clip.name] = agreement(mel_loudness(clip.pcm, clip.times), clip.opening)
    return out


def ridge_baseline(clips: list[Clip], context_s: float = 0.1, lookahead_s: float = 0.1,
                   alpha: float = 1000.0) -> Scores:
    """Linear model on per-window-normalised mel windows, trained on the other clips (leave one out)."""
    xs, ys = [], []
    for clip in clips:
        w = clip_windows(clip, context_s, lookahead_s)
        w = w - w.max(axis=(1, 2), keepdims=True)
        w = np.maximum(w, -12.0)
        # pool mel bins in groups of 4 to keep the linear model small
        w = w.reshape(len(w), w.shape[1], 20, 4).mean(axis=3)
        xs.append(w.reshape(len(w), -1))
        ys.append(np.nan_to_num(clip.opening))
    out = {}
    for i, clip in enumerate(clips):
        x = np.concatenate([x for j, x in enumerate(xs) if j != i])
        y = np.concatenate([y for j, y in enumerate(ys) if j != i])
        mu, sd = x.mean(0), x.std(0) + 1e-6
        xn = (x - mu) / sd
        coef = np.linalg.solve(xn.T @ xn + alpha * np.eye(xn.shape[1]), xn.T @ (y - y.mean()))
        pred = ((xs[i] - mu) / sd) @ coef
        out[clip.name] = agreement(pred, clip.opening)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/audio2mouth-cache"))
    args = parser.parse_args()
    clips = real_clips(cache=args.cache)
    summarise("loudness", loudness_baseline(clips))
    summarise("ridge on mel windows (leave one clip out)", ridge_baseline(clips))
    model = AudioToMouth.load(args.weights)
    net = blend.network_only(model)
    summarise("committed network alone (synthetic speech only: these clips are held out)", model_scores(net, clips))
    if model.config.ridge_frames:
        print("committed blend (network + ridge on real clips), nested leave-one-clip-out: for each clip the ridge,\n"
              "its patch shape, alpha and the blend weight are fitted on the other clips only")
        scores, _ = blend.nested_loco(net, clips, log=lambda s: None)
        summarise("committed blend, nested leave-one-clip-out (honest)", scores)
        c = model.config
        print(f"shipped blend: ridge on the last {c.ridge_frames} frames pooled {c.ridge_tpool}x{c.ridge_pool}, "
              f"network weight {c.blend_w:g} (fitted on all {len(clips)} clips; its score on them is not reported)")


if __name__ == "__main__":
    main()
