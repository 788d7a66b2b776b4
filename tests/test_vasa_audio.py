"""vasa backend, HuBERT windowing (engines/vasa/audio.py; spec vasa.md §3, §8.2 item 4)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engines.vasa import audio as A


def fake_hubert(window: np.ndarray) -> np.ndarray:
    """Deterministic stand-in for hubert.onnx: T = (N-400)//320 + 1 steps of 1024, step j made
    from window samples [320j, 320j+400) only (HuBERT's receptive field)."""
    n = len(window)
    t = (n - 400) // 320 + 1
    enc = np.zeros((t, 1024), np.float32)
    for j in range(t):
        seg = window[320 * j : 320 * j + 400]
        enc[j, 0] = seg[0]
        enc[j, 1] = seg[-1]
        enc[j, 2] = j
        enc[j, 3:] = np.float32(seg.sum()) * np.linspace(0.001, 1.0, 1021, dtype=np.float32)
    return enc


def reference_windows(pcm: np.ndarray) -> list[np.ndarray]:
    """Ditto's inference.py slicing, written out: 1920 zeros in front, audio[i:i+6480] for
    i = 0, 3200, ..., the last zero-padded."""
    audio = np.concatenate([np.zeros(1920, np.float32), pcm])
    out = []
    for i in range(0, len(audio), 3200):
        chunk = audio[i : i + 6480]
        out.append(np.pad(chunk, (0, 6480 - len(chunk))))
    return out


def test_constants() -> None:
    assert (A.SAMPLE_RATE, A.FRAME_SAMPLES, A.WINDOW_SAMPLES, A.HOP_SAMPLES) == (16000, 640, 6480, 3200)
    assert (A.LEAD_SAMPLES, A.FRAMES_PER_WINDOW, A.OFFLINE_LEAD) == (1920, 5, 2000)
    assert (A.KEEP_FROM, A.KEEP_TO) == (-14, -4)
    assert [A.window_end_sample(w) for w in range(3)] == [4560, 7760, 10960]
    assert A.window_start_sample(0) == -1920
    assert list(A.windows_due(0, 4559)) == []
    assert list(A.windows_due(0, 4560)) == [0]
    assert list(A.windows_due(0, 10959)) == [0, 1]
    assert list(A.windows_due(2, 10960)) == [2]
    assert list(A.windows_due(3, 10960)) == []
    assert list(A.windows_due(0, 0)) == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_windows_match_reference_slicing(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 16000 * 3 + int(rng.integers(0, 3200))
    pcm = rng.standard_normal(n).astype(np.float32)
    ref = reference_windows(pcm)

    stream = A.StreamAudio()
    got: list[np.ndarray] = []
    pos, next_w, max_buffered = 0, 0, 0
    while pos < n:
        # 20 ms pushes with jitter, and odd chunk sizes now and then
        size = int(rng.choice([320 + int(rng.integers(-40, 41)), 1, 7, 999, 3201, 0]))
        end = min(n, pos + size)
        # each write repeats up to 0.2 s already delivered, as overlapping AudioWindows do
        back = int(rng.integers(0, 3201))
        lo = max(0, pos - back)
        stream.add(lo, pcm[lo:end])
        pos = end
        assert stream.available_until() == pos
        for w in A.windows_due(next_w, stream.available_until()):
            got.append(stream.window(w))
            next_w = w + 1
        max_buffered = max(max_buffered, stream.buffered)
    while len(got) < len(ref):  # end of stream: the rest, zero-padded
        got.append(stream.window(next_w))
        next_w += 1

    assert len(got) == len(ref) == math.ceil((n + 1920) / 3200)
    for w, (a, b) in enumerate(zip(got, ref)):
        assert a.dtype == np.float32 and a.shape == (6480,)
        assert np.array_equal(a, b), f"window {w} differs"
    # bounded: what the next window needs plus one write (3201 + 3200 back) at most
    assert max_buffered <= 6480 + 3201 + 3200


def test_later_writes_fill_in_zeros() -> None:
    pcm = np.arange(1, 20001, dtype=np.float32)
    stream = A.StreamAudio()
    # a window whose future part had not arrived (zeros), then the next one with it
    first = pcm[:8000].copy()
    first[6000:] = 0
    stream.add(0, first)
    stream.add(3000, pcm[3000:12000])
    assert stream.available_until() == 12000
    assert np.array_equal(stream.window(1), reference_windows(pcm)[1])


def test_writes_before_zero_and_released_samples() -> None:
    stream = A.StreamAudio()
    stream.add(-500, np.ones(1000, np.float32))  # the part before sample 0 is dropped
    assert stream.available_until() == 500
    win0 = stream.window(0)
    assert np.all(win0[:1920] == 0) and np.all(win0[1920:2420] == 1) and np.all(win0[2420:] == 0)
    stream.add(0, np.full(20000, 2, np.float32))
    stream.window(3)  # releases what windows 0..2 needed
    with pytest.raises(ValueError, match="released"):
        stream.window(1)
    assert stream.buffered == 20000 - A.window_start_sample(3)
    stream.release_before(5)
    assert stream.buffered == 20000 - A.window_start_sample(5)
    with pytest.raises(ValueError, match="mono"):
        stream.add(0, np.zeros((2, 10), np.float32))


def test_features_slice_and_pair_mean() -> None:
    """Window w's features are frames 5w..5w+4, feature k starting at stream sample 640k."""
    n = 16000 * 2
    pcm = np.arange(1, n + 1, dtype=np.float32)  # sample s holds s + 1 (0 stays "padding")
    stream = A.StreamAudio()
    stream.add(0, pcm)
    for w in range(5):
        window = stream.window(w)
        enc = fake_hubert(window)
        assert enc.shape == (20, 1024)
        feats = A.features_from_encoding(enc)
        assert feats.shape == (5, 1024) and feats.dtype == np.float32
        for p in range(5):
            k = 5 * w + p
            # steps 6+2p and 7+2p start at window samples 320(6+2p): stream 640k and 640k + 320
            first = [640 * k + 1, 640 * k + 320 + 1]
            assert feats[p, 0] == np.float32(np.mean(np.float32(first)))
            assert feats[p, 2] == np.float32((6 + 2 * p + 7 + 2 * p) / 2)
        assert np.array_equal(feats, enc[-14:-4].reshape(5, 2, 1024).mean(axis=1))
        assert np.array_equal(A.features_from_encoding(enc[None]), feats)


@pytest.mark.parametrize(
    "shape", [(20, 512), (13, 1024), (2, 20, 1024), (1024,), (1, 1, 20, 1024)]
)
def test_features_bad_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="HuBERT encoding"):
        A.features_from_encoding(np.zeros(shape, np.float32))


def test_offline_windows_and_features() -> None:
    for n, frames in [(44800, 70), (48000, 75), (1000, 2), (640, 1), (641, 2), (0, 0)]:
        pcm = np.arange(1, n + 1, dtype=np.float32)
        wins = A.offline_windows(pcm)
        assert len(wins) == math.ceil(frames / 5)
        assert all(w.shape == (6480,) for w in wins)
        feats = A.offline_features(fake_hubert, pcm)
        assert feats.shape == (frames, 1024)
        for k in range(frames):
            # offline windows sit 80 samples earlier than the online ones: frame k starts at 640k - 80
            start = 640 * k - 80
            first = [s + 1 if 0 <= s < n else 0 for s in (start, start + 320)]
            assert feats[k, 0] == np.float32(np.mean(np.float32(first))), k
    # window i is padded[640i : 640i + 6480] with 2000 zeros in front
    pcm = np.arange(1, 9001, dtype=np.float32)
    padded = np.concatenate([np.zeros(2000, np.float32), pcm, np.zeros(6480, np.float32)])
    for idx, w in enumerate(A.offline_windows(pcm)):
        i = 5 * idx
        assert np.array_equal(w, padded[640 * i : 640 * i + 6480])


def test_silence_features_computed_once() -> None:
    A.clear_silence_cache()
    calls = []

    def counting(window: np.ndarray) -> np.ndarray:
        calls.append(window.copy())
        return fake_hubert(window)

    first = A.silence_features(counting, 70, "model-a")
    n_windows = len(calls)
    assert n_windows == 14 and all(not c.any() for c in calls)  # 70 frames of digital silence
    assert first.shape == (70, 1024)
    assert np.array_equal(first, A.offline_features(fake_hubert, np.zeros(70 * 640, np.float32)))
    again = A.silence_features(counting, 70, "model-a")
    assert again is first and len(calls) == n_windows  # cached: HuBERT not run again
    with pytest.raises(ValueError):
        first[0, 0] = 1.0  # read-only: no stream can spoil another's warm-up
    A.silence_features(counting, 75, "model-a")
    assert len(calls) == n_windows + 15  # another length is another entry
    A.silence_features(counting, 70, "model-b")
    assert len(calls) == n_windows + 15 + 14  # another model is another entry
    A.clear_silence_cache()
