"""HuBERT windowing for the `vasa` backend, in numpy (spec vasa.md §3).

Ditto's online driver (antgroup/ditto-talkinghead@e9191cf ``inference.py``) prepends
``LEAD_SAMPLES`` = 3 frames of zeros to the audio and cuts windows of ``WINDOW_SAMPLES`` = 6480
samples every ``HOP_SAMPLES`` = 3200 (5 frames at 25 fps). In stream time (sample 0 = the
stream's first sample, 16 kHz) window *w* is therefore samples ``[3200w - 1920, 3200w + 4560)``
and gives the features of video frames ``5w .. 5w+4`` (§3.1). HuBERT turns it into 20 frames at
50 Hz, of which ``[-14:-4]`` are kept and averaged in pairs (§3.2, ``wav2feat.py``).

:class:`StreamAudio` rebuilds that absolute-time signal from the server's per-frame
:class:`~engines.base.AudioWindow` s, which overlap and hold zeros where audio never arrived.

The offline path (``Wav2FeatHubert.wav2feat``) is used only for the warm-up silence that the
online driver puts before frame 0 (§3.3); its windows sit 80 samples earlier than the online ones.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Callable, Hashable

import numpy as np

SAMPLE_RATE = 16000
FPS = 25
FRAME_SAMPLES = SAMPLE_RATE // FPS  # 640
FRAMES_PER_WINDOW = 5  # chunksize (3, 5, 2): past, current, future frames
PAST_FRAMES, FUTURE_FRAMES = 3, 2
HOP_SAMPLES = FRAMES_PER_WINDOW * FRAME_SAMPLES  # 3200
WINDOW_SAMPLES = (PAST_FRAMES + FRAMES_PER_WINDOW + FUTURE_FRAMES) * FRAME_SAMPLES + 80  # 6480
LEAD_SAMPLES = PAST_FRAMES * FRAME_SAMPLES  # 1920 zeros the online driver prepends
FEATURE_DIM = 1024
# HuBERT steps kept from each window: the 5 current frames, 2 steps each (wav2feat.py)
KEEP_FROM = -(FRAMES_PER_WINDOW + FUTURE_FRAMES) * 2  # -14
KEEP_TO = -FUTURE_FRAMES * 2  # -4
# offline path: zeros in front so that its first window's current block starts near sample 0
OFFLINE_LEAD = WINDOW_SAMPLES - (FRAMES_PER_WINDOW + FUTURE_FRAMES) * FRAME_SAMPLES  # 2000

# run_hubert(window (n,) float32) -> encoding (T, 1024) or (1, T, 1024)
HubertFn = Callable[[np.ndarray], np.ndarray]


def window_start_sample(w: int) -> int:
    """First stream sample of HuBERT window ``w`` (negative: before the stream, zeros) (§3.1)."""
    return HOP_SAMPLES * w - LEAD_SAMPLES


def window_end_sample(w: int) -> int:
    """One past the last stream sample window ``w`` reads: 3200w + 4560 (§3.1)."""
    return window_start_sample(w) + WINDOW_SAMPLES


def windows_due(next_w: int, available_until: int) -> range:
    """The windows from ``next_w`` on whose audio has all been delivered (end <= available)."""
    last = (available_until - window_end_sample(0)) // HOP_SAMPLES  # floor, also below zero
    return range(next_w, max(next_w, last + 1))


def features_from_encoding(enc: np.ndarray) -> np.ndarray:
    """(5, 1024) features of a window's 5 current frames from HuBERT's encoding (§3.2).

    ``enc`` is (T, 1024) or (1, T, 1024) with T >= 14 (20 for a 6480-sample window). Steps
    ``[-14:-4]`` cover the current frames; consecutive pairs (50 Hz) are averaged to 25 Hz.
    """
    arr = np.asarray(enc)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.shape[1] != FEATURE_DIM:
        raise ValueError(
            f"HuBERT encoding has shape {tuple(np.shape(enc))}; expected (T, {FEATURE_DIM}) or (1, T, {FEATURE_DIM})"
        )
    if arr.shape[0] < -KEEP_FROM:
        raise ValueError(
            f"HuBERT encoding has {arr.shape[0]} steps; at least {-KEEP_FROM} are needed "
            f"(a {WINDOW_SAMPLES}-sample window gives 20)"
        )
    kept = arr[KEEP_FROM:KEEP_TO].astype(np.float32, copy=False)
    return kept.reshape(FRAMES_PER_WINDOW, 2, FEATURE_DIM).mean(axis=1)


class StreamAudio:
    """One stream's 16 kHz audio on absolute stream time, fed by overlapping writes (§3.1, §10).

    The server gives every frame job an AudioWindow around its slot, zeros where audio never
    arrived; consecutive windows overlap. Each write overwrites what it covers (a later window
    knows at least as much as an earlier one). Samples before the oldest window still to be cut
    are dropped when a window is cut (windows are consumed in order), so memory stays bounded.
    """

    def __init__(self) -> None:
        self._data = np.zeros(0, np.float32)
        self._base = 0  # stream sample of _data[0]; everything before it was released
        self._end = 0  # one past the last sample ever written

    def add(self, start_sample: int, pcm: np.ndarray) -> None:
        """Write ``pcm`` (mono) at stream samples ``[start_sample, start_sample + len(pcm))``.

        Samples before 0 or before what was already released are ignored.
        """
        pcm = np.asarray(pcm, dtype=np.float32)
        if pcm.ndim != 1:
            raise ValueError(f"pcm must be mono (1-D), got shape {pcm.shape}")
        start = int(start_sample)
        end = start + len(pcm)
        lo = max(start, self._base)
        if end <= lo:
            return
        stored_end = self._base + len(self._data)
        if end > stored_end:
            self._data = np.concatenate([self._data, np.zeros(end - stored_end, np.float32)])
        self._data[lo - self._base : end - self._base] = pcm[lo - start :]
        self._end = max(self._end, end)

    def available_until(self) -> int:
        """One past the last stream sample delivered so far."""
        return self._end

    def window(self, w: int) -> np.ndarray:
        """HuBERT window ``w``: stream samples [3200w - 1920, 3200w + 4560), (6480,) float32.

        Samples before the stream or not delivered are zeros (as the online driver pads the last
        window). Cutting window ``w`` releases what only earlier windows needed.
        """
        start = window_start_sample(w)
        if max(start, 0) < self._base:
            raise ValueError(f"window {w} starts at sample {start}, already released (kept from {self._base})")
        out = np.zeros(WINDOW_SAMPLES, np.float32)
        lo = max(start, 0)
        hi = min(start + WINDOW_SAMPLES, self._base + len(self._data))
        if hi > lo:
            out[lo - start : hi - start] = self._data[lo - self._base : hi - self._base]
        self.release_before(w)
        return out

    def release_before(self, w: int) -> None:
        """Drop the samples no window from ``w`` on reads."""
        cut = window_start_sample(w) - self._base
        if cut <= 0:
            return
        self._data = self._data[cut:]
        self._base += cut

    @property
    def buffered(self) -> int:
        """Samples held (for stats and the memory bound)."""
        return len(self._data)


def offline_windows(pcm: np.ndarray) -> list[np.ndarray]:
    """Ditto's offline HuBERT windows of a whole clip (§3.2, ``Wav2FeatHubert.wav2feat``).

    2000 zeros in front and 6480 at the end; window i (i = 0, 5, 10, ... < ceil(len/640)) is
    ``padded[640i : 640i + 6480]``. Ditto computes the frame count as ``ceil(len/16000*25)`` in
    floating point, which gives one frame more for some lengths (4480 samples: 8, not 7); this
    uses the exact ``ceil(len/640)``. The two agree on the warm-up lengths (70 or 75 frames).
    """
    pcm = np.asarray(pcm, dtype=np.float32)
    if pcm.ndim != 1:
        raise ValueError(f"pcm must be mono (1-D), got shape {pcm.shape}")
    n_frames = math.ceil(len(pcm) / FRAME_SAMPLES)
    padded = np.concatenate([np.zeros(OFFLINE_LEAD, np.float32), pcm, np.zeros(WINDOW_SAMPLES, np.float32)])
    return [
        padded[i * FRAME_SAMPLES : i * FRAME_SAMPLES + WINDOW_SAMPLES]
        for i in range(0, n_frames, FRAMES_PER_WINDOW)
    ]


def offline_features(run_hubert: HubertFn, pcm: np.ndarray) -> np.ndarray:
    """(ceil(len/640), 1024) features of a whole clip by the offline path (§3.2)."""
    n_frames = math.ceil(len(pcm) / FRAME_SAMPLES)
    feats = [features_from_encoding(run_hubert(win)) for win in offline_windows(pcm)]
    if not feats:
        return np.zeros((0, FEATURE_DIM), np.float32)
    return np.concatenate(feats, axis=0)[:n_frames]


_SILENCE_CACHE: OrderedDict[tuple[Hashable, int], np.ndarray] = OrderedDict()
_SILENCE_LOCK = threading.Lock()
_SILENCE_CACHE_SIZE = 8


def silence_features(run_hubert: HubertFn, n_frames: int, key: Hashable) -> np.ndarray:
    """The warm-up features of ``n_frames`` frames of digital silence (§3.3), read-only.

    They are the same for every stream, so they are computed once per process for each
    (``key``, ``n_frames``); ``key`` names the HuBERT model (its path or hash) the caller runs.
    """
    if n_frames <= 0:
        raise ValueError(f"n_frames must be positive, got {n_frames}")
    cache_key = (key, int(n_frames))
    with _SILENCE_LOCK:  # held while computing, so that concurrent streams compute it once
        cached = _SILENCE_CACHE.get(cache_key)
        if cached is not None:
            _SILENCE_CACHE.move_to_end(cache_key)
            return cached
        feats = offline_features(run_hubert, np.zeros(n_frames * FRAME_SAMPLES, np.float32))
        if feats.shape != (n_frames, FEATURE_DIM):  # Ditto asserts the same
            raise ValueError(f"silence features have shape {feats.shape}, expected ({n_frames}, {FEATURE_DIM})")
        feats = np.ascontiguousarray(feats, dtype=np.float32)
        feats.setflags(write=False)
        _SILENCE_CACHE[cache_key] = feats
        while len(_SILENCE_CACHE) > _SILENCE_CACHE_SIZE:
            _SILENCE_CACHE.popitem(last=False)
        return feats


def clear_silence_cache() -> None:
    """Forget the cached warm-up features (tests; a model reload under the same key)."""
    with _SILENCE_LOCK:
        _SILENCE_CACHE.clear()
