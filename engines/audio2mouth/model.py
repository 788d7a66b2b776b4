"""Audio-to-mouth model: log-mel frames around one video frame -> mouth parameters.

Numpy-only inference (no torch at run time). The weights file ``weights.npz`` beside this module
holds float32 arrays and a JSON ``config`` string; ``train.py`` regenerates it.

Input: the server's log-mel frames (``engines.features``) whose centres lie in
[t - context_s, t + lookahead_s). Each window is normalised on its own (level-invariant): the
window's maximum log-mel value (over the whole context, so that a pause after speech stays
quiet relative to the speech before it) is subtracted, the result clipped ``floor`` below it and
scaled to [0, 1]; one extra input says how loud the window is in absolute terms (a silence gate
the network learns to use). The network sees the last ``detail_s + lookahead_s`` of it.
With ``local_frames`` the detail frames enter a second time, relative to the maximum of the last
``local_frames`` frames (the local spectral shape). Architecture: a per-frame projection shared over
time (80 or 160 -> P, ReLU), the projections of the detail frames flattened, two dense ReLU layers,
and three outputs: open (sigmoid), width (tanh), closure (sigmoid), as ``engines.mouth.MouthParams``
defines them. The weights may hold several such networks (keys ``m0.``, ``m1.``, ...: an ensemble
whose outputs are averaged, or weighted by ``member_weights`` when the file holds it).

Optionally (``ridge_frames > 0``; ``blend.py`` fits it) the ``open`` output is blended with a
ridge regression trained on real talking clips' mouth tracks: coarse log-mel patches of the last
``ridge_frames`` frames (relative to their own maximum, pooled ``ridge_tpool`` frames x
``ridge_pool`` bins) -> FaceMesh lip opening, mapped onto the network's scale and gated by the
network's absolute-level input (so silence stays closed):
``open = blend_w * net_open + (1 - blend_w) * level * clip(net_mean + ridge_scale * (ridge - ridge_mean), 0, 1)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines import features

DEFAULT_WEIGHTS = Path(__file__).with_name("weights.npz")
LAYERS = ("proj", "fc1", "fc2", "out")


@dataclass(frozen=True)
class Config:
    context_s: float = 0.80  # past audio: the level reference looks this far back
    lookahead_s: float = 0.10
    detail_s: float = 0.30  # the network sees the spectra of [t - detail_s, t + lookahead_s)
    floor: float = 12.0  # natural-log units kept below the window's maximum (about 52 dB)
    level_low: float = -12.0  # window maximum at which the level input is 0 ...
    level_high: float = -6.0  # ... and 1
    proj: int = 24
    hidden: int = 128
    hidden2: int = 64
    # > 0: each detail frame also enters relative to the maximum of the last ``local_frames`` frames
    # (the local spectral shape, as the ridge sees it), doubling the projection's input to 160
    local_frames: int = 0
    # ridge blend for ``open`` (0 frames: network only)
    ridge_frames: int = 0
    ridge_pool: int = 8
    ridge_tpool: int = 2
    blend_w: float = 1.0  # weight of the network's open
    ridge_scale: float = 1.0
    ridge_mean: float = 0.0
    net_mean: float = 0.0

    @property
    def frames(self) -> int:
        return len(features.frames_centered_in(10.0 - self.context_s, 10.0 + self.lookahead_s))

    @property
    def detail_frames(self) -> int:
        return len(features.frames_centered_in(10.0 - self.detail_s, 10.0 + self.lookahead_s))


def normalise(mel: np.ndarray, config: Config) -> tuple[np.ndarray, np.ndarray]:
    """(B, T, 80) log-mel -> ((B, D, 80) in [0, 1]: the last D = detail_frames frames relative to the
    whole window's maximum (with ``local_frames``: (B, D, 160), the same frames relative to the maximum of
    the last ``local_frames`` frames appended, clipped to 1), (B, 1) level of that maximum in [0, 1])."""
    mel = np.asarray(mel, np.float32)
    top = mel.max(axis=(1, 2), keepdims=True)
    detail = mel[:, -config.detail_frames:]
    x = (np.maximum(detail - top, -config.floor) + config.floor) / config.floor
    if config.local_frames:
        local_top = mel[:, -config.local_frames:].max(axis=(1, 2), keepdims=True)
        x_local = (np.maximum(detail - local_top, -config.floor) + config.floor) / config.floor
        x = np.concatenate([x, np.minimum(x_local, 1.0)], axis=2)
    level = np.clip((top[:, :, 0] - config.level_low) / (config.level_high - config.level_low), 0.0, 1.0)
    return x.astype(np.float32), level.astype(np.float32)


def ridge_features(mel: np.ndarray, frames: int, pool: int, tpool: int, floor: float = 12.0) -> np.ndarray:
    """(B, T, 80) log-mel -> (B, frames / tpool * 80 / pool): the last ``frames`` frames relative to
    their own maximum, clipped ``floor`` below it, averaged over tpool x pool blocks."""
    x = np.asarray(mel, np.float32)[:, -frames:]
    x = np.maximum(x - x.max(axis=(1, 2), keepdims=True), -floor)
    x = x.reshape(len(x), frames // tpool, tpool, features.N_MELS // pool, pool).mean(axis=(2, 4))
    return x.reshape(len(x), -1)


class AudioToMouth:
    """Predicts [open, width, closure] per video frame from its mel window."""

    def __init__(self, params: dict[str, np.ndarray], config: Config) -> None:
        self.config = config
        self.context_s = config.context_s
        self.lookahead_s = config.lookahead_s
        self.frames = config.frames
        self._p = {k: np.ascontiguousarray(v, np.float32) for k, v in params.items()}
        # one network (keys "proj.w", ...) or an ensemble ("m0.proj.w", "m1.proj.w", ...) whose outputs are averaged
        prefixes = [""] if "proj.w" in self._p else sorted(
            k[: -len("proj.w")] for k in self._p if k.startswith("m") and k.endswith(".proj.w"))
        self._nets = [{k[len(q):]: v for k, v in self._p.items() if k.startswith(q) and k[len(q):].split(".")[0] in LAYERS}
                      for q in prefixes]
        # each network's share of the output: ``member_weights`` (a mixture) or equal (an ensemble)
        self._shares = self._p.get("member_weights", np.full(len(self._nets), 1.0 / len(self._nets), np.float32))

    @property
    def networks(self) -> list[dict[str, np.ndarray]]:
        """Each network's parameters (keys ``proj.w`` ... ``out.b``)."""
        return self._nets

    @classmethod
    def load(cls, path: Path | None = None) -> "AudioToMouth":
        path = Path(path) if path is not None else DEFAULT_WEIGHTS
        if not path.exists():
            raise FileNotFoundError(f"audio-to-mouth weights not found at {path} (python -m engines.audio2mouth.train)")
        with np.load(path, allow_pickle=False) as data:
            config = Config(**json.loads(str(data["config"])))
            params = {k: data[k] for k in data.files if k != "config"}
        return cls(params, config)

    def save(self, path: Path) -> None:
        config = {k: getattr(self.config, k) for k in Config.__dataclass_fields__}
        np.savez(path, config=np.array(json.dumps(config)), **self._p)

    @staticmethod
    def _network(x: np.ndarray, level: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
        h = np.maximum(x @ p["proj.w"] + p["proj.b"], 0.0)  # (B, T, P)
        h = np.concatenate([h.reshape(len(h), -1), level], axis=1)
        h = np.maximum(h @ p["fc1.w"] + p["fc1.b"], 0.0)
        h = np.maximum(h @ p["fc2.w"] + p["fc2.b"], 0.0)
        z = h @ p["out.w"] + p["out.b"]
        out = np.empty_like(z)
        out[:, 0] = 1.0 / (1.0 + np.exp(-z[:, 0]))
        out[:, 1] = np.tanh(z[:, 1])
        out[:, 2] = 1.0 / (1.0 + np.exp(-z[:, 2]))
        return out

    def predict(self, mel: np.ndarray) -> np.ndarray:
        """(T, 80) log-mel window -> float32 (3,) [open, width, closure]."""
        return self.predict_batch(np.asarray(mel)[None])[0]

    def predict_batch(self, mels: np.ndarray) -> np.ndarray:
        """(B, T, 80) log-mel windows -> float32 (B, 3)."""
        mels = np.asarray(mels, np.float32)
        if mels.ndim != 3 or mels.shape[1:] != (self.frames, features.N_MELS):
            raise ValueError(f"expected mel windows of shape (B, {self.frames}, {features.N_MELS}), got {mels.shape}")
        p = self._p
        x, level = normalise(mels, self.config)
        out = np.zeros((len(mels), 3), np.float32)
        for net, share in zip(self._nets, self._shares):  # an ensemble averages its networks' outputs (weighted)
            out += share * self._network(x, level, net)
        c = self.config
        if c.ridge_frames:
            r = ridge_features(mels, c.ridge_frames, c.ridge_pool, c.ridge_tpool) @ p["ridge.w"] + p["ridge.b"]
            r = np.clip(c.net_mean + c.ridge_scale * (r - c.ridge_mean), 0.0, 1.0)
            out[:, 0] = c.blend_w * out[:, 0] + (1.0 - c.blend_w) * level[:, 0] * r
        return out.astype(np.float32)


def mel_windows(mel: np.ndarray, times_s: np.ndarray, context_s: float, lookahead_s: float) -> np.ndarray:
    """(N, T, 80) windows of a whole-signal log-mel (framed from sample 0) around each time,
    exactly as the server cuts them (frames outside the signal are ``features.SILENCE``)."""
    ranges = [features.frames_centered_in(t - context_s, t + lookahead_s) for t in times_s]
    length = len(ranges[0]) if ranges else 0
    out = np.full((len(ranges), length, features.N_MELS), features.SILENCE, np.float32)
    for i, r in enumerate(ranges):
        lo, hi = max(r.start, 0), min(r.stop, len(mel))
        if hi > lo:
            out[i, lo - r.start:hi - r.start] = mel[lo:hi]
    return out


def mixture(parts: list[tuple[AudioToMouth, float]]) -> AudioToMouth:
    """One model whose networks are all of ``parts``' networks (same config, no ridge blend), each part's
    output weighted by its share (shares sum to 1, split evenly over that part's networks)."""
    nets = [(net, share / len(model.networks)) for model, share in parts for net in model.networks]
    if abs(sum(share for _, share in parts) - 1.0) > 1e-6:
        raise ValueError("the shares of a mixture sum to 1")
    params = {f"m{i}.{k}": v for i, (net, _) in enumerate(nets) for k, v in net.items()}
    params["member_weights"] = np.array([share for _, share in nets], np.float32)
    return AudioToMouth(params, parts[0][0].config)


def ensemble(models: list[AudioToMouth]) -> AudioToMouth:
    """One model whose networks are ``models``' (same config), outputs averaged; no ridge blend."""
    if len(models) == 1:
        return AudioToMouth({k: v for k, v in models[0]._nets[0].items()}, models[0].config)
    params = {f"m{i}.{k}": v for i, m in enumerate(models) for net in m._nets for k, v in net.items()}
    if any(len(m._nets) != 1 for m in models):
        raise ValueError("ensemble() takes single-network models")
    return AudioToMouth(params, models[0].config)
