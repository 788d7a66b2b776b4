"""Fit the prosody-to-motion model (``model.py``) on the corpus' FaceMesh tracks, validated by speaker.

    python -m engines.head_motion.train [--folds 4] [--out engines/head_motion/weights.npz]
                                        [--hold-out SPEAKER ...]

Every clip of ``../shared/corpus`` with audio and a face is tracked once (``tracks.py``, cached)
and its audio taken as the server hears it (Opus round trip, ``audio2mouth.clips.live_audio``,
cached). Speakers, not clips, are held out: for each of ``--folds`` speaker groups a model is fitted
on the others and measured (``measures.py``) on that group beside the real tracks; each speaker
weighs the same in every fit and every figure, so GRID_s1's 151 clips count as one speaker.
``--hold-out`` leaves speakers out of the final fit (for benchmarks on them). The figures go to
``train_results.json`` beside the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import welch
from scipy.stats import skew

from engines.audio2mouth.clips import AUDIO_VERSION, CACHE_DIR as AUDIO_CACHE, content_hash, corpus_speakers, live_audio, speaker_folds
from engines.head_motion.measures import blink_times, clip_measures, smoothed
from engines.head_motion.model import CHANNELS, CONTEXT_S, LAGS, WEIGHTS, HeadMotion, MotionWeights, recent_energy
from engines.head_motion.prosody import FEATURES, FPS, prosody
from engines.head_motion.tracks import motion_track
from engines.lipsync_measures import fill_nan

SPECTRUM_FRAMES = 64  # 2.56 s: 0.39 Hz apart (GRID's 3 s clips still give one segment)
ONE_SIDED_SKEW = 0.5
RIDGE = 1.0  # times the mean diagonal of the (weighted) Gram matrix
BLINK_INTERVAL_RANGE_S = (2.5, 6.0)  # the fitted mean is kept inside what people do while talking


@dataclass
class MotionClip:
    name: str
    speaker: str
    times: np.ndarray
    track: dict[str, np.ndarray]
    pcm: np.ndarray
    inputs: np.ndarray  # (frames, lags * features)
    targets: np.ndarray  # (frames, channels), lightly smoothed, NaN without a face


def live_pcm(path: Path) -> np.ndarray:
    """The clip's audio as the server hears it, cached where the audio-to-mouth data keeps it."""
    cached = AUDIO_CACHE / f"{content_hash(path)}.{AUDIO_VERSION}.npy"
    if cached.exists():
        return np.load(cached)
    pcm = live_audio(path)
    cached.parent.mkdir(parents=True, exist_ok=True)
    np.save(cached.with_suffix(".tmp.npy"), pcm)
    os.replace(cached.with_suffix(".tmp.npy"), cached)
    return pcm


def model_inputs(pcm: np.ndarray, times: np.ndarray) -> np.ndarray:
    """The filter's input at each frame time: prosody at every lag, flattened as the model reads it."""
    grid = (times[:, None] + LAGS[None, :] / FPS).reshape(-1)
    return prosody(pcm, grid).reshape(len(times), -1)


def load_clip(path: Path, speaker: str) -> MotionClip | None:
    try:
        pcm = live_pcm(path)
    except ValueError:
        return None  # no audio
    track = motion_track(path)
    times = track["times"]
    if len(times) < 20 or np.mean(np.isfinite(track["yaw"])) < 0.8:
        return None
    # smoothed as the measures smooth (measures.smoothed): what is left of FaceMesh's jitter is
    # not head motion, and the free motion's spectrum must not learn it
    targets = np.stack([np.where(np.isfinite(track[c]), smoothed(track[c]), np.nan) for c in CHANNELS], axis=1)
    return MotionClip(path.stem, speaker, times, track, pcm, model_inputs(pcm, times), targets)


def load_corpus(log=print) -> list[MotionClip]:
    clips = []
    started = time.monotonic()
    pairs = corpus_speakers()
    for n, (path, speaker) in enumerate(pairs):
        clip = load_clip(path, speaker)
        if clip is not None:
            clips.append(clip)
        if (n + 1) % 20 == 0 or n + 1 == len(pairs):
            log(f"  tracks {n + 1}/{len(pairs)} ({time.monotonic() - started:.0f} s)")
    return clips


def speaker_weights(clips: list[MotionClip]) -> dict[str, float]:
    frames: dict[str, int] = {}
    for c in clips:
        frames[c.speaker] = frames.get(c.speaker, 0) + len(c.times)
    return {s: 1.0 / n for s, n in frames.items()}


def fit(clips: list[MotionClip], ridge: float = RIDGE) -> MotionWeights:
    weight_of = speaker_weights(clips)
    x = np.concatenate([c.inputs for c in clips])
    y = np.concatenate([c.targets for c in clips])
    w = np.concatenate([np.full(len(c.times), weight_of[c.speaker]) for c in clips])
    filters = np.zeros((len(CHANNELS), x.shape[1]))
    for ch in range(len(CHANNELS)):
        ok = np.isfinite(y[:, ch])
        xs, ys, ws = x[ok], y[ok, ch], w[ok]
        # standardised columns, so that the ridge shrinks a rare input (a stressed syllable) no
        # more than a constant one (the energy)
        spread = np.sqrt(np.sum(ws[:, None] * xs**2, axis=0) / np.sum(ws)) + 1e-9
        xz = xs / spread
        gram = (xz * ws[:, None]).T @ xz
        scale = np.trace(gram) / len(gram)
        filters[ch] = np.linalg.solve(gram + ridge * scale * np.eye(len(gram)), (xz * ws[:, None]).T @ ys) / spread
    residuals = [np.stack([fill_nan(c.targets[:, ch] - c.inputs @ filters[ch]) for ch in range(len(CHANNELS))], axis=1)
                 for c in clips]
    return MotionWeights(filters, free_spread(clips, residuals, weight_of), np.fft.rfftfreq(SPECTRUM_FRAMES, 1.0 / FPS),
                         free_spectrum(clips, residuals), blink_interval(clips), one_sided(clips))


def median_speaker(per_speaker: dict[str, list]) -> Any:
    """The median over speakers of each speaker's mean (of numbers, or element-wise of arrays)."""
    return np.median([np.mean(values, axis=0) for values in per_speaker.values()], axis=0)


def free_spread(clips: list[MotionClip], residuals: list[np.ndarray], weight_of: dict[str, float]) -> np.ndarray:
    """(channels, 2): the free part's spread against the speech energy of the last CONTEXT_S.

    It follows the energy as the real motion's *speed* does (real heads move faster while talking,
    not further). Fitted within clips (each clip's speed relative to its own mean, against its
    energy less its own mean), so that speakers who are loud and still do not cancel speakers who
    are soft and restless; scaled to the median speaker's residual spread."""
    sigma = np.zeros((len(CHANNELS), 2))
    k = max(1, int(round(CONTEXT_S * FPS)))
    for ch in range(len(CHANNELS)):
        rows_e, rows_v, rows_w, levels = [], [], [], []
        spread_of: dict[str, list[float]] = {}
        for c, resid_all in zip(clips, residuals):
            resid = resid_all[:, ch]
            recent = recent_energy(c.inputs.reshape(len(c.inputs), len(LAGS), len(FEATURES)))
            speed = np.convolve(np.abs(np.diff(resid, prepend=resid[:1])), np.ones(k) / k, mode="same")
            if speed.mean() <= 1e-12:
                continue
            rows_e.append(recent - recent.mean()); rows_v.append(speed / speed.mean() - 1.0)
            rows_w.append(np.full(len(resid), weight_of[c.speaker]))
            levels.append((weight_of[c.speaker] * len(resid), float(recent.mean())))
            spread_of.setdefault(c.speaker, []).append(float(np.std(resid)))
        e, v, wt = np.concatenate(rows_e), np.concatenate(rows_v), np.concatenate(rows_w)
        slope = float(np.sum(wt * e * v) / max(np.sum(wt * e * e), 1e-12))
        level = sum(w * m for w, m in levels) / max(sum(w for w, _ in levels), 1e-12)
        typical = float(median_speaker(spread_of))
        base = max(1.0 - slope * level, 0.1)  # the relative spread at silence: never quite still
        sigma[ch] = typical * np.array([base, slope])
    return sigma


def free_spectrum(clips: list[MotionClip], residuals: list[np.ndarray]) -> np.ndarray:
    """(channels, bins): the free part's spectrum, each speaker's (normalised), then the median
    speaker's at each frequency of ``rfftfreq(SPECTRUM_FRAMES)``."""
    spectra = []
    for ch in range(len(CHANNELS)):
        per_speaker: dict[str, list[np.ndarray]] = {}
        for c, resid_all in zip(clips, residuals):
            grid = np.arange(c.times[0], c.times[-1], 1.0 / FPS)
            if len(grid) < SPECTRUM_FRAMES:
                continue
            z = np.interp(grid, c.times, resid_all[:, ch])
            _, power = welch(z - z.mean(), fs=FPS, nperseg=SPECTRUM_FRAMES)
            per_speaker.setdefault(c.speaker, []).append(power / max(float(power.sum()), 1e-12))
        spectra.append(median_speaker(per_speaker))
    spectrum = np.stack(spectra)
    return spectrum / spectrum.sum(axis=1, keepdims=True)


def one_sided(clips: list[MotionClip]) -> np.ndarray:
    """Channels whose real tracks the median speaker skews (skewness > ONE_SIDED_SKEW)."""
    flags = []
    for ch in range(len(CHANNELS)):
        per_speaker: dict[str, list[float]] = {}
        for c in clips:
            values = c.targets[np.isfinite(c.targets[:, ch]), ch]
            if len(values) > 10:
                per_speaker.setdefault(c.speaker, []).append(float(skew(values)))
        flags.append(float(median_speaker(per_speaker)) > ONE_SIDED_SKEW)
    return np.array(flags)


def blink_interval(clips: list[MotionClip]) -> float:
    per_speaker: dict[str, list[float]] = {}
    for c in clips:
        found = per_speaker.setdefault(c.speaker, [0.0, 0.0])
        found[0] += len(blink_times(c.track))
        found[1] += float(c.times[-1] - c.times[0])
    interval = blink_interval_of([(int(b), s) for b, s in per_speaker.values()]) or 4.0
    return float(np.clip(interval, *BLINK_INTERVAL_RANGE_S))


def synthesise(model: HeadMotion, pcm: np.ndarray, times: np.ndarray, amount: float = 1.0) -> dict[str, np.ndarray]:
    """The model's track for a clip's audio at its frame times (as the renderer would be driven)."""
    poses = [model.at(float(t), pcm, float(t), amount) for t in times]
    track = {c: np.array([getattr(p, c) for p in poses]) for c in CHANNELS}
    track["eyelid"] = 0.3 * (1.0 - np.array([p.blink for p in poses]))
    track["times"] = times
    return track


def summarise(rows: list[dict], key: str) -> dict[str, float | None]:
    """Speaker-weighted figures of per-clip measures (each speaker's clips averaged first)."""
    by_speaker: dict[str, list[dict]] = {}
    for r in rows:
        by_speaker.setdefault(r["speaker"], []).append(r[key])
    out: dict[str, float | None] = {}
    for name in ("rotation_speed_median", "energy_coupling", "brow_rise", "brow_spread"):
        values = [np.mean([m[name] for m in ms if m[name] is not None]) for ms in by_speaker.values()
                  if any(m[name] is not None for m in ms)]
        out[name] = float(np.median(values)) if values else None
    out["blink_interval_s"] = blink_interval_of([(sum(m["blinks"] for m in ms), sum(m["seconds"] for m in ms))
                                                 for ms in by_speaker.values()])
    return out


def blink_interval_of(per_speaker: list[tuple[int, float]]) -> float | None:
    """Mean time between blinks from (blinks, seconds) per speaker, each speaker's rate weighing the same."""
    rates = [b / s for b, s in per_speaker if s > 0]
    mean_rate = float(np.mean(rates)) if rates else 0.0
    return 1.0 / mean_rate if mean_rate > 0 else None


def validate(clips: list[MotionClip], folds: int, log=print) -> dict:
    groups = speaker_folds(clips, folds)  # type: ignore[arg-type]
    rows = []
    for k, held in enumerate(groups):
        train = [c for c in clips if c.speaker not in held]
        model = HeadMotion(fit(train), seed=k)
        for c in clips:
            if c.speaker in held:
                rows.append({"speaker": c.speaker, "clip": c.name, "real": clip_measures(c.track, c.pcm),
                             "output": clip_measures(synthesise(model, c.pcm, c.times), c.pcm)})
        log(f"  fold {k + 1}/{len(groups)}: {len(held)} speakers held out")
    real, output = summarise(rows, "real"), summarise(rows, "output")
    return {"folds": [sorted(g) for g in groups], "real": real, "output": output, "clips": len(rows)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument("--hold-out", nargs="*", default=[], metavar="SPEAKER")
    args = parser.parse_args(argv)
    print("reading the corpus (FaceMesh tracks are cached after the first run)", flush=True)
    clips = load_corpus(log=lambda m: print(m, flush=True))
    print(f"{len(clips)} clips, {len({c.speaker for c in clips})} speakers; validating by speaker", flush=True)
    report = validate(clips, args.folds, log=lambda m: print(m, flush=True))
    kept = [c for c in clips if c.speaker not in set(args.hold_out)]
    weights = fit(kept)
    weights.save(args.out)
    report.update({"trained_on_speakers": len({c.speaker for c in kept}), "held_out": args.hold_out,
                   "blink_interval_s": weights.blink_interval_s})
    results = args.out.with_name("train_results.json") if args.out == WEIGHTS else args.out.with_suffix(".json")
    results.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"real": report["real"], "output": report["output"]}, indent=2))
    print(f"wrote {args.out} and {results}")


if __name__ == "__main__":
    sys.exit(main())
