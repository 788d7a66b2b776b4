"""Training data from real talking faces, and leave-speakers-out validation.

Every clip of ``../shared/corpus`` and ``../shared/testdata/video`` (read in place; mouth tracks and
live-path audio cached outside the repository by ``clips.track``) becomes training windows at its
video frame times (pts), the audio being the server's: 48 kHz, Opus round trip, 16 kHz, log-mel by
``engines.features.LogMel`` (what ``stream_server.audio_in`` computes), plus augmented copies
(``augment.augment`` and a random band limit) of the same audio.

Targets per video frame, normalised per speaker (the measure is a correlation, and speakers open
their mouths by different amounts):

* ``open`` = ``OPEN_AT_P95`` * opening / (the speaker's 95th percentile of opening), clipped to [0, 1];
* ``width`` = 8 * (width - the speaker's median width), clipped to [-1, 1] (weight 0.3);
* ``closure`` = 1 - opening / (``CLOSED_BELOW`` * that percentile), clipped to [0, 1]: lips together.

Frames without a face are masked out. Voice-free stretches (digital silence and low noise,
``SILENCE_SEGMENTS`` x ``SILENCE_S``, ``SILENCE_SHARE`` of the samples) are added with lips together,
since the clips hardly pause. Validation is by speaker (:func:`clips.speaker_folds`), figures
per source and as means over speakers and over clips (:func:`report`).
"""

from __future__ import annotations

import numpy as np

from engines import features
from engines.audio2mouth.augment import augment
from engines.audio2mouth.clips import Clip
from engines.audio2mouth.model import AudioToMouth, Config
from engines.audio2mouth.scores import clip_windows, speaker_mean
from engines.lipsync_measures import agreement

OPEN_AT_P95 = 0.65  # the network's open at the speaker's 95th-percentile opening (a wide vowel)
CLOSED_BELOW = 0.12  # opening below this fraction of the speaker's p95 counts as lips together
SILENCE_SEGMENTS, SILENCE_S, SILENCE_SHARE = 16, 2.0, 0.05  # voice-free stretches added to the pool


def speaker_scale(clips: list[Clip]) -> dict[str, float]:
    out = {}
    for speaker in sorted({c.speaker for c in clips}):
        o = np.concatenate([c.opening for c in clips if c.speaker == speaker])
        o = o[np.isfinite(o)]
        out[speaker] = float(np.percentile(o, 95)) if len(o) else 1.0
    return out


def speaker_width(clips: list[Clip]) -> dict[str, float]:
    out = {}
    for speaker in sorted({c.speaker for c in clips}):
        w = np.concatenate([c.width for c in clips if c.speaker == speaker])
        out[speaker] = float(np.nanmedian(w)) if np.isfinite(w).any() else 0.0
    return out


def targets(clip: Clip, scale: float, width_mid: float) -> tuple[np.ndarray, np.ndarray]:
    rel = clip.opening / max(scale, 1e-6)
    open_ = np.clip(OPEN_AT_P95 * rel, 0, 1)
    width = np.clip((clip.width - width_mid) * 8.0, -1, 1)
    closure = np.clip(1.0 - rel / CLOSED_BELOW, 0, 1)
    ok = np.isfinite(rel).astype(np.float32)
    y = np.nan_to_num(np.stack([open_, width, closure], 1)).astype(np.float32)
    m = np.stack([ok, ok * np.isfinite(clip.width), ok], 1).astype(np.float32)
    return y, m


def band_limit(pcm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random telephone / cheap-microphone band: low-pass 3-7.5 kHz, sometimes high-pass 80-300 Hz."""
    from scipy.signal import butter, sosfilt

    sr = features.SAMPLE_RATE
    x = sosfilt(butter(4, rng.uniform(3000, 7500), "low", fs=sr, output="sos"), pcm)
    if rng.random() < 0.5:
        x = sosfilt(butter(2, rng.uniform(80, 300), "high", fs=sr, output="sos"), x)
    return x.astype(np.float32)


def augmented(pcm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = augment(pcm, rng, 0.8)
    if rng.random() < 0.5:
        x = band_limit(x, rng)
    return x


class WindowPool:
    """Real-clip windows as one long log-mel plus per-window start indices (gathered at training time),
    the interface ``train.train`` reads (``mel``, ``starts``, ``targets``, ``masks``, ``real_x``)."""

    def __init__(self, config: Config, clips: list[Clip], copies: int, seed: int, clip_weight: str = "speaker") -> None:
        logmel = features.LogMel()
        rng = np.random.default_rng(seed)
        scale, wmid = speaker_scale(clips), speaker_width(clips)
        pad = config.frames + 5
        silence = np.full((pad, features.N_MELS), features.SILENCE, np.float32)
        mels, starts, ys, ms, ws = [silence], [], [], [], []
        offset = pad
        frames_per_speaker: dict[str, int] = {}
        for c in clips:
            frames_per_speaker[c.speaker] = frames_per_speaker.get(c.speaker, 0) + len(c.times)
        for c in clips:
            y, m = targets(c, scale[c.speaker], wmid[c.speaker])
            first = np.array([features.frames_centered_in(t - config.context_s, t + config.lookahead_s).start
                              for t in c.times])
            # sampling weight: every speaker about equally (sqrt: more data still counts for more)
            n = frames_per_speaker[c.speaker]
            w = {"speaker": 1.0 / np.sqrt(n), "speaker_equal": 1.0 / n}.get(clip_weight, 1.0)
            for k in range(copies + 1):
                pcm = c.pcm if k == 0 else augmented(c.pcm, rng)
                mel = logmel.frames(pcm)
                mels += [mel, silence]
                starts.append(offset + first)
                ys.append(y)
                ms.append(m)
                ws.append(np.full(len(y), w))
                offset += len(mel) + pad
        # pauses the real clips hardly have: digital silence and noise-only stretches (no voice), lips
        # together (open 0, closure 1), together ``SILENCE_SHARE`` of the samples
        n_before = len(ys)
        for k in range(SILENCE_SEGMENTS):
            n = int(SILENCE_S * features.SAMPLE_RATE)
            if k % 2 == 0:
                pcm = np.zeros(n, np.float32)
            else:
                noise = rng.standard_normal(n)
                if k % 4 == 3:
                    noise = np.cumsum(noise) * 0.05  # brown-ish
                pcm = (noise / (np.abs(noise).max() + 1e-9) * 10 ** (rng.uniform(-70, -35) / 20)).astype(np.float32)
            mel = logmel.frames(pcm)
            times = np.arange(0.0, SILENCE_S, 0.04)
            first = np.array([features.frames_centered_in(t - config.context_s, t + config.lookahead_s).start
                              for t in times])
            mels += [mel, silence]
            starts.append(offset + first)
            ys.append(np.tile(np.array([[0.0, 0.0, 1.0]], np.float32), (len(times), 1)))
            ms.append(np.tile(np.array([[1.0, 0.0, 1.0]], np.float32), (len(times), 1)))
            ws.append(np.ones(len(times)))
            offset += len(mel) + pad
        speech_w = sum(w.sum() for w in ws[:n_before])
        quiet_n = sum(len(w) for w in ws[n_before:])
        for i in range(n_before, len(ws)):
            ws[i] = ws[i] * speech_w * SILENCE_SHARE / (1 - SILENCE_SHARE) / quiet_n
        mels.append(np.full((config.frames + pad, features.N_MELS), features.SILENCE, np.float32))
        self.mel = np.concatenate(mels)
        self.starts = np.concatenate(starts)
        self.targets = np.concatenate(ys)
        self.masks = np.concatenate(ms)
        w = np.concatenate(ws)
        self.weights = w / w.sum()
        self.real_x, self.real_y, self.real_m = [], [], []
        self.frames = config.frames


def loudness(clip: Clip) -> np.ndarray:
    """40 ms log energy at each video frame time (the baseline predictor)."""
    sr = features.SAMPLE_RATE
    out = []
    for t in clip.times:
        seg = clip.pcm[max(0, int((t - 0.02) * sr)):max(1, int((t + 0.02) * sr))]
        out.append(np.log(np.mean(seg.astype(np.float64) ** 2) + 1e-10) if len(seg) else -23.0)
    return np.array(out)


def clip_scores(model: AudioToMouth, clips: list[Clip]) -> dict[str, dict]:
    out = {}
    for c in clips:
        pred = model.predict_batch(clip_windows(c, model.context_s, model.lookahead_s))[:, 0]
        r0, lag, _ = agreement(pred, c.opening)
        l0, llag, _ = agreement(loudness(c), c.opening)
        out[c.name] = {"speaker": c.speaker, "source": c.source, "r": r0, "lag": lag, "loud_r": l0, "loud_lag": llag}
    return out


def report(scores: dict[str, dict], log=print, title: str = "") -> dict:
    """Means over clips and over speakers (each speaker's clips averaged first), per source too."""
    def summary(rows: list[dict]) -> dict:
        return {"clips": len(rows), "speakers": len({r["speaker"] for r in rows}),
                "r_clips": float(np.mean([r["r"] for r in rows])), "loud_clips": float(np.mean([r["loud_r"] for r in rows])),
                "r_speakers": speaker_mean(rows, "r"), "loud_speakers": speaker_mean(rows, "loud_r"),
                "lag_clips": float(np.mean([r["lag"] for r in rows]))}

    rows = list(scores.values())
    out = {"all": summary(rows)}
    for source in sorted({r["source"] for r in rows}):
        out[source] = summary([r for r in rows if r["source"] == source])
    if title:
        log(title)
    log(f"  {'source':12s} {'clips':>5s} {'spk':>4s}  {'r/clip':>7s} {'loud':>6s}  {'r/spk':>7s} {'loud':>6s}  lag")
    for k, v in out.items():
        log(f"  {k:12s} {v['clips']:5d} {v['speakers']:4d}  {v['r_clips']:+7.3f} {v['loud_clips']:+6.3f}  "
            f"{v['r_speakers']:+7.3f} {v['loud_speakers']:+6.3f}  {v['lag_clips']:+.2f}")
    return out
