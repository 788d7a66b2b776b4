"""Blend of the synthetic-speech network with a ridge regression trained on real clips (``open`` only).

The network (``train.py``) never sees the real clips. The ridge maps coarse log-mel patches
(``model.ridge_features``) to the FaceMesh lip opening of the real clips. Everything that is chosen
from data -- the ridge's patch shape (:data:`RIDGE_SHAPES`), its alpha (:data:`ALPHAS`) and the
network's weight in the blend (:data:`NET_WEIGHTS`) -- is chosen by leave-one-clip-out over the
clips :func:`fit_blend` is given, maximising the mean per-clip agreement r (lag 0).

:func:`nested_loco` is the honest figure: for each clip, :func:`fit_blend` runs on the *other*
clips only (choices and ridge fit included) and the resulting model is scored on the held-out clip.
The shipped model is ``fit_blend`` on all clips.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from engines.audio2mouth.clips import Clip
from engines.audio2mouth.model import AudioToMouth, normalise, ridge_features
from engines.audio2mouth.scores import clip_windows, model_scores
from engines.lipsync_measures import pearson, smooth3

# (frames, bin pool, frame pool): the last 0.2 / 0.3 / 0.4 s (0.1 s of it lookahead), 10 or 5 bands
RIDGE_SHAPES = [(f, p, t) for f in (20, 30, 40) for p in (8, 16) for t in (2, 5)]
ALPHAS = [3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0]
NET_WEIGHTS = [0.0, 0.15, 0.3, 0.5]


def network_only(model: AudioToMouth) -> AudioToMouth:
    return AudioToMouth(model._p, replace(model.config, ridge_frames=0, blend_w=1.0))


class _Clips:
    """Per-clip windows, targets, network output and ridge sufficient statistics per patch shape."""

    def __init__(self, net: AudioToMouth, clips: list[Clip]) -> None:
        self.clips = clips
        windows = [clip_windows(c, net.context_s, net.lookahead_s) for c in clips]
        self.y = [np.nan_to_num(c.opening).astype(np.float64) for c in clips]
        self.net = [net.predict_batch(w)[:, 0].astype(np.float64) for w in windows]
        self.level = [normalise(w, net.config)[1][:, 0] for w in windows]
        self.x, self.stats = {}, {}
        for shape in RIDGE_SHAPES:
            xs = [ridge_features(w, *shape).astype(np.float64) for w in windows]
            self.x[shape] = xs
            self.stats[shape] = [(len(x), x.sum(0), y.sum(), x.T @ x, x.T @ y) for x, y in zip(xs, self.y)]


def _fit(stats: list, idx: list[int], alpha: float) -> tuple[np.ndarray, float]:
    n = sum(stats[k][0] for k in idx)
    mx = sum(stats[k][1] for k in idx) / n
    my = sum(stats[k][2] for k in idx) / n
    gram = sum(stats[k][3] for k in idx) - n * np.outer(mx, mx)
    cross = sum(stats[k][4] for k in idx) - n * mx * my
    coef = np.linalg.solve(gram + alpha * np.eye(len(gram)), cross)
    return coef, float(my - mx @ coef)


def _r(pred: np.ndarray, real: np.ndarray) -> float:
    """Agreement r at lag 0 (:func:`engines.lipsync_measures.agreement`'s first figure)."""
    return pearson(smooth3(pred), smooth3(real))


def _fit_on(net: AudioToMouth, cd: _Clips, idx: list[int]) -> tuple[AudioToMouth, dict]:
    best = None
    for shape in RIDGE_SHAPES:
        for alpha in ALPHAS:
            oof = {}
            for j in idx:
                coef, b = _fit(cd.stats[shape], [k for k in idx if k != j], alpha)
                oof[j] = cd.x[shape][j] @ coef + b
            sr = np.std(np.concatenate(list(oof.values())))
            sn = np.std(np.concatenate([cd.net[j] for j in idx]))
            for w in NET_WEIGHTS:
                score = np.mean([_r(w * cd.net[j] / sn + (1 - w) * oof[j] / sr, cd.clips[j].opening) for j in idx])
                if best is None or score > best[0]:
                    best = (score, shape, alpha, w, sn / sr)
    score, shape, alpha, w, scale = best
    coef, b = _fit(cd.stats[shape], idx, alpha)
    fitted = np.concatenate([cd.x[shape][j] @ coef + b for j in idx])
    config = replace(net.config, ridge_frames=shape[0], ridge_pool=shape[1], ridge_tpool=shape[2],
                     blend_w=float(w), ridge_scale=float(scale), ridge_mean=float(fitted.mean()),
                     net_mean=float(np.mean(np.concatenate([cd.net[j] for j in idx]))))
    params = dict(net._p)
    params["ridge.w"] = coef.astype(np.float32)
    params["ridge.b"] = np.array([b], np.float32)
    choice = {"ridge_shape": list(shape), "alpha": alpha, "net_weight": w, "inner_loco_mean_r": float(score),
              "clips": [cd.clips[j].name for j in idx]}
    return AudioToMouth(params, config), choice


def fit_blend(net: AudioToMouth, clips: list[Clip]) -> tuple[AudioToMouth, dict]:
    """The blended model fitted on ``clips`` (shape, alpha and weight chosen by LOCO over them)."""
    net = network_only(net)
    return _fit_on(net, _Clips(net, clips), list(range(len(clips))))


def nested_loco(net: AudioToMouth, clips: list[Clip], log=print) -> tuple[dict, list[dict]]:
    """Per held-out clip: agreement of the blend fitted (all choices included) on the other clips."""
    net = network_only(net)
    cd = _Clips(net, clips)
    results, choices = {}, []
    for i, clip in enumerate(clips):
        model, choice = _fit_on(net, cd, [j for j in range(len(clips)) if j != i])
        results.update(model_scores(model, [clip]))
        choices.append({"held_out": clip.name, **{k: v for k, v in choice.items() if k != "clips"}})
        log(f"  held out {clip.name}: shape {choice['ridge_shape']} alpha {choice['alpha']:g} "
            f"net weight {choice['net_weight']} -> r0 {results[clip.name][0]:+.3f}")
    return results, choices
