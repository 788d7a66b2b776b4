"""Audio in: ring buffer placement, streaming features against one-shot librosa, windows."""

from __future__ import annotations

from fractions import Fraction

import av
import librosa
import numpy as np
import pytest

from engines import features
from stream_server.audio_in import AudioIn
from stream_server.ring_buffer import SampleRing
from tests.media import load_audio, shared_media

CHUNK_48K = 960  # 20 ms, what aiortc's Opus decoder hands over


def opus_like_frames(pcm48: np.ndarray, start_pts: int = 0, stereo: bool = True):
    """Split 48 kHz float audio into 20 ms s16 frames stamped like aiortc's decoder does."""
    samples = np.clip(pcm48 * 32767, -32768, 32767).astype(np.int16)
    for n in range(len(samples) // CHUNK_48K):
        chunk = samples[n * CHUNK_48K : (n + 1) * CHUNK_48K]
        data = np.repeat(chunk, 2).reshape(1, -1) if stereo else chunk.reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(data, format="s16", layout="stereo" if stereo else "mono")
        frame.sample_rate = 48000
        frame.pts = (start_pts + n * CHUNK_48K) % (1 << 32)
        frame.time_base = Fraction(1, 48000)
        yield n, frame


def librosa_logmel(pcm16: np.ndarray) -> np.ndarray:
    power = librosa.feature.melspectrogram(
        y=pcm16, sr=16000, n_fft=400, hop_length=160, win_length=400, window="hann",
        center=False, power=2.0, n_mels=80, fmin=0.0, fmax=8000.0,
    )
    return np.log(np.maximum(power, features.LOG_FLOOR)).T


@pytest.fixture(scope="module")
def speech48() -> np.ndarray:
    return load_audio(shared_media("audio", "vretalking_1.wav"), 48000, seconds=6.0)


def test_ring_places_by_index_and_fills_gaps_with_silence() -> None:
    ring = SampleRing(100, np.float32)
    ring.write(0, np.ones(10, np.float32))
    ring.write(20, np.full(5, 2.0, np.float32))  # 10..20 never arrived
    assert ring.end == 25
    np.testing.assert_array_equal(ring.read(8, 14), [1, 1] + [0] * 10 + [2, 2])
    assert not ring.has(15) and ring.has(21)
    ring.write(10, np.full(10, 3.0, np.float32))  # the late packet fills its own place only
    np.testing.assert_array_equal(ring.read(18, 4), [3, 3, 2, 2])
    ring.write(290, np.ones(10, np.float32))  # far ahead: the old data is out of the ring
    assert ring.start == 200
    np.testing.assert_array_equal(ring.read(190, 12), [0] * 10 + [0, 0])
    assert ring.read(295, 10).tolist() == [1] * 5 + [0] * 5


def test_streaming_mel_matches_one_shot_librosa(speech48: np.ndarray) -> None:
    audio = AudioIn()
    for n, frame in opus_like_frames(speech48):
        audio.push(frame, arrival=n * 0.02)
    # the reference: the same 16 kHz signal the stream produced, in one librosa call
    pcm16 = audio.pcm16k.read(0, audio.pcm16k.end)
    reference = librosa_logmel(pcm16)
    streamed = audio.mel.read(0, len(reference))
    assert len(reference) > 450
    # Tolerance: float32 FFT against librosa's float64 path; 1e-3 in log power (0.004 dB)
    # wherever the band holds more than 1e-6 of power, absolute 0.05 in the near-silent floor.
    loud = reference > np.log(1e-6)
    assert np.max(np.abs(streamed[loud] - reference[loud])) < 1e-3
    assert np.max(np.abs(streamed - reference)) < 0.05


def test_resampled_stream_matches_offline_resampling(speech48: np.ndarray) -> None:
    audio = AudioIn()
    for n, frame in opus_like_frames(speech48):
        audio.push(frame, arrival=n * 0.02)
    quantised = np.clip(speech48 * 32767, -32768, 32767).astype(np.int16) / 32768.0
    offline = librosa.resample(quantised[: audio.horizon_s.__ceil__() * 48000], orig_sr=48000, target_sr=16000)
    streamed = audio.pcm16k.read(0, audio.pcm16k.end)
    # find the resampler's delay, then compare: the stream is the same signal, not shifted in time
    n = 16000 * 4
    lags = range(0, 40)
    errors = [np.mean(np.abs(streamed[lag : lag + n] - offline[:n])) for lag in lags]
    best = int(np.argmin(errors))
    assert best <= 32, f"16 kHz stream lags by {best} samples (> 2 ms)"
    assert errors[best] < 0.01 * np.mean(np.abs(offline[:n])) + 1e-3


def test_lost_packets_leave_silence_and_never_shift_time(speech48: np.ndarray) -> None:
    complete, lossy = AudioIn(), AudioIn()
    lost = {10, 11, 12, 40}
    for n, frame in opus_like_frames(speech48[: 48000 * 2]):
        complete.push(frame, arrival=n * 0.02)
    for n, frame in opus_like_frames(speech48[: 48000 * 2]):
        if n not in lost:
            lossy.push(frame, arrival=n * 0.02)
    assert lossy.horizon_s == complete.horizon_s == 2.0
    assert lossy.samples_lost == 4 * CHUNK_48K
    # the 48 kHz playback ring: silence exactly where packets were lost, identical elsewhere
    np.testing.assert_array_equal(lossy.playback(10 * CHUNK_48K, 3 * CHUNK_48K), 0)
    np.testing.assert_array_equal(lossy.playback(13 * CHUNK_48K, 27 * CHUNK_48K), complete.playback(13 * CHUNK_48K, 27 * CHUNK_48K))
    # features after the gap line up with the lossless stream (same time, same values)
    after = lossy.mel.read(100, 50), complete.mel.read(100, 50)
    assert np.max(np.abs(after[0] - after[1])) < 1e-3


def test_rtp_timestamps_unwrap_across_32_bits(speech48: np.ndarray) -> None:
    audio = AudioIn()
    start = (1 << 32) - 5 * CHUNK_48K  # wraps after five frames
    for n, frame in opus_like_frames(speech48[: 48000], start_pts=start):
        audio.push(frame, arrival=n * 0.02)
    assert audio.horizon_s == 1.0 and audio.samples_lost == 0


def test_window_lands_on_the_right_samples_at_chunk_boundaries() -> None:
    # a ramp makes every sample's value its own index, so any shift shows
    ramp = (np.arange(48000 * 2) % 48000) / 48000.0 * 0.9
    audio = AudioIn()
    for n, frame in opus_like_frames(ramp.astype(np.float32), stereo=False):
        audio.push(frame, arrival=n * 0.02)
    pad = 4800  # 100 ms of silence before media time 0, where windows may start
    pcm48 = np.concatenate([np.zeros(pad), audio.playback(0, 96000).astype(np.float64) / 32767])
    for center in (0.02, 0.04, 0.5, 0.98, 1.0):  # on 20 ms chunk edges and the wrap of the ramp
        window = audio.window(center, before_s=0.04, after_s=0.02)
        assert len(window.pcm) == 960  # 60 ms at 16 kHz
        first = pad + round((center - 0.04) * 48000)
        expected = pcm48[first : first + 2880 : 3]
        delay, error = _best_lag(window.pcm, expected)
        assert delay <= 16 and error < 0.002, f"window at {center}s is {delay} samples off (error {error})"
    mel = audio.window(1.0, before_s=0.1, after_s=0.05).mel
    # 150 ms of frames centred in [0.9, 1.05): 15 frames (centres every 10 ms, at 12.5 ms + 10 ms k)
    assert mel.shape == (15, 80)
    frames = features.frames_centered_in(0.9, 1.05)
    assert features.frame_center_s(frames.start) >= 0.9 > features.frame_center_s(frames.start - 1)


def test_window_before_the_stream_and_beyond_the_horizon_is_silence() -> None:
    audio = AudioIn()
    for n, frame in opus_like_frames(np.full(48000, 0.5, np.float32)):
        audio.push(frame, arrival=n * 0.02)
    window = audio.window(0.0, before_s=0.1, after_s=0.0)
    assert np.all(window.pcm == 0) and np.all(window.mel == features.SILENCE)
    ahead = audio.window(1.2, before_s=0.05, after_s=0.05)
    assert np.all(ahead.pcm == 0)
    assert np.all(ahead.mel == features.SILENCE)


def _best_lag(streamed: np.ndarray, expected: np.ndarray) -> tuple[int, float]:
    """Samples by which ``streamed`` lags ``expected`` (resampler delay, searched in 0..20) and
    the median error at that lag (median: the resampler rings where the ramp wraps)."""
    n = len(expected) - 24
    errors = [float(np.median(np.abs(streamed[lag : lag + n] - expected[:n]))) for lag in range(0, 21)]
    return int(np.argmin(errors)), min(errors)


def test_media_time_of_a_pts_across_the_32_bit_wrap(speech48: np.ndarray) -> None:
    """Camera frames are placed on the audio timeline through an audio pts (from the sender
    reports): that pts must map to the same media time as the frames' own, across a wrap."""
    audio = AudioIn()
    start = (1 << 32) - 10 * CHUNK_48K
    assert audio.media_of_pts(start) is None
    for n, frame in opus_like_frames(speech48[: 48000], start_pts=start):
        audio.push(frame, arrival=n * 0.02)
    assert audio.media_of_pts(start) == 0.0
    assert audio.media_of_pts((start + 48000 * 0.5) % (1 << 32)) == pytest.approx(0.5)  # after the wrap
    assert audio.media_of_pts((start + 48000 * 3) % (1 << 32)) == pytest.approx(3.0)  # not yet arrived
    assert audio.media_of_pts((start - 4800) % (1 << 32)) == pytest.approx(-0.1)  # before the first


def test_release_frees_the_resamplers_threads_at_once(speech48: np.ndarray) -> None:
    """Each resampler is an FFmpeg filter graph with threads; a session's reference cycles would
    keep them until a garbage collection, so release() drops them when the session ends."""
    import gc
    import os

    def threads() -> int:
        return len(os.listdir("/proc/self/task"))

    gc.collect()
    gc.disable()  # what the server sees between its rare full collections
    try:
        audio = AudioIn()
        for _, frame in opus_like_frames(speech48[:48000]):
            audio.push(frame, 0.0)
        with_graphs = threads()
        audio.release()
        assert threads() < with_graphs
        for _, frame in opus_like_frames(speech48[:9600]):
            audio.push(frame, 0.0)  # frames after the end are ignored, not an error
    finally:
        gc.enable()
