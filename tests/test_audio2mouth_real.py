"""Real-corpus pieces of the audio-to-mouth training: track extraction, the Opus round trip, speaker folds,
fine-tuning and mixtures.

Fast (seconds): one short test clip through FaceMesh, a few training steps on noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engines.audio2mouth import clips as clip_sets
from engines.audio2mouth.clips import Clip

SHORT_CLIP = clip_sets.VIDEO_DIR / "pcavs_vox2_pose_517600055.mp4"


def test_track_extraction_matches_the_measure_and_is_cached(tmp_path: Path) -> None:
    from engines.lipsync_measures import mouth_track

    if not SHORT_CLIP.exists():
        pytest.fail(f"missing test clip {SHORT_CLIP}")
    d = clip_sets.track(SHORT_CLIP, cache=tmp_path)
    assert d is not None
    opening, _, times = mouth_track(SHORT_CLIP)
    # the same definition (DESIGN.md) and the same frame times (pts) as the quality benchmark's
    np.testing.assert_allclose(d["times"], times)
    np.testing.assert_allclose(d["opening"], opening, equal_nan=True, atol=1e-9)
    assert np.isfinite(d["opening"]).mean() > 0.9 and np.all(np.diff(d["times"]) > 0)
    assert d["width"].shape == d["opening"].shape and 0.5 < np.nanmedian(d["width"]) < 1.5
    # the live-path audio covers the clip, at 16 kHz
    assert abs(len(d["pcm"]) / 16000 - times[-1]) < 0.5
    files = sorted(p.name for p in tmp_path.iterdir())
    assert any(clip_sets.TRACK_VERSION in f for f in files) and any(clip_sets.AUDIO_VERSION in f for f in files)
    again = clip_sets.track(SHORT_CLIP, cache=tmp_path)  # from the cache
    np.testing.assert_array_equal(again["opening"], d["opening"])
    np.testing.assert_array_equal(again["pcm"], d["pcm"])


def test_opus_round_trip_keeps_length_and_timing() -> None:
    sr = clip_sets.OPUS_RATE
    rng = np.random.default_rng(0)
    n = int(1.37 * sr)  # not a whole number of 20 ms frames
    t = np.arange(n) / sr
    # speech-like: bursts of a 200 Hz harmonic tone with noise, starting at known times
    x = np.zeros(n)
    for start in (0.2, 0.55, 0.9):
        seg = (t >= start) & (t < start + 0.15)
        x[seg] = 0.3 * np.sin(2 * np.pi * 200 * t[seg]) + 0.1 * np.sin(2 * np.pi * 600 * t[seg]) \
            + 0.02 * rng.standard_normal(seg.sum())
    y = clip_sets.opus_round_trip(x.astype(np.float32))
    assert len(y) == n and y.dtype == np.float32
    lags = np.arange(-200, 201)
    xc = [np.dot(x[1000:-1000], y[1000 + k:n - 1000 + k]) for k in lags]
    assert abs(lags[int(np.argmax(xc))]) <= 24  # within 0.5 ms
    energy = lambda s: np.array([np.mean(s[i:i + 480] ** 2) for i in range(0, n - 480, 480)])  # noqa: E731
    assert np.corrcoef(energy(x), energy(y))[0, 1] > 0.95
    pcm16 = clip_sets.to_16k(y)
    assert len(pcm16) == n // 3


def fake_clips() -> list[Clip]:
    manifest = json.loads((clip_sets.CORPUS_DIR / "MANIFEST.json").read_text())
    out = []
    for e in manifest:
        times = np.arange(0, e["duration_s"], 0.04)
        out.append(Clip(Path(e["file"]).stem, np.zeros(1, np.float32), times, times * 0, times * 0, speaker=e["speaker"]))
    for name in ("a", "b", "c"):
        out.append(Clip(name, np.zeros(1, np.float32), np.arange(100) * 0.04, np.zeros(100), np.zeros(100),
                        speaker=f"testdata_{name}"))
    return out


@pytest.mark.parametrize("k", [3, 5, 8])
def test_speaker_folds_never_split_a_speaker(k: int) -> None:
    clips = fake_clips()
    folds = clip_sets.speaker_folds(clips, k)
    assert len(folds) == k
    speakers = [s for f in folds for s in f]
    assert sorted(speakers) == sorted({c.speaker for c in clips})  # each speaker in exactly one fold
    # the biggest speaker (GRID_s1, 150 clips) is a fold of its own, so it never dominates another fold
    assert folds[0] == ["GRID_s1"]
    assert all(len(f) >= 1 for f in folds)
    assert clip_sets.speaker_folds(clips, k) == folds  # deterministic


def test_sources_cover_the_corpus() -> None:
    manifest = json.loads((clip_sets.CORPUS_DIR / "MANIFEST.json").read_text())
    sources = {clip_sets.source_of(e["speaker"]) for e in manifest}
    assert {"GRID", "LRS2", "HDTF", "Vox", "CREMA-D"} <= sources


def test_fine_tuning_starts_from_the_given_network_and_mixtures_keep_their_shares() -> None:
    pytest.importorskip("torch")  # a training dependency (installed by make / .ci/run)
    from engines.audio2mouth.model import AudioToMouth, Config, mixture
    from engines.audio2mouth.real import WindowPool
    from engines.audio2mouth.train import train

    rng = np.random.default_rng(0)
    config = Config(local_frames=20)
    times = np.arange(0.0, 3.0, 0.04)
    speech = Clip("noise", (rng.standard_normal(16000 * 3) * 0.1).astype(np.float32), times,
                  rng.uniform(0.0, 0.3, len(times)), rng.uniform(0.8, 0.9, len(times)), speaker="s", source="test")
    pool = WindowPool(config, [speech], copies=0, seed=0)
    start = train(pool, config, steps=3, seed=1, log=lambda s: None)
    x = pool.mel[pool.starts[:8, None] + np.arange(config.frames)]
    # with a vanishing learning rate, the network comes back as it went in (weights loaded the right way round)
    kept = train(pool, config, steps=2, seed=2, log=lambda s: None, init=start.networks[0], lr=1e-12)
    np.testing.assert_allclose(kept.predict_batch(x), start.predict_batch(x), atol=1e-5)
    # and with a real one it moves
    moved = train(pool, config, steps=2, seed=2, log=lambda s: None, init=start.networks[0], lr=1e-2)
    assert np.abs(moved.predict_batch(x) - start.predict_batch(x)).max() > 1e-4
    mixed = mixture([(moved, 0.6), (start, 0.4)])
    assert isinstance(mixed, AudioToMouth)
    np.testing.assert_allclose(mixed.predict_batch(x), 0.6 * moved.predict_batch(x) + 0.4 * start.predict_batch(x),
                               atol=1e-5)
