"""MuseTalk's offline audio features against the streaming windows (the measurement's plumbing;
the figure itself needs the real whisper-tiny weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from benchmarks.whisper_streaming import measure  # noqa: E402
from engines.musetalk.audio import log_mel  # noqa: E402
from engines.musetalk.model import WhisperFeatures  # noqa: E402
from engines.musetalk.offline import offline_features  # noqa: E402
from engines.musetalk.tiny import TINY_DIM, write_tiny_set  # noqa: E402
from engines.musetalk.weights import find_layout, load_whisper_encoder  # noqa: E402
from tests.media import shared_media  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_set(tmp_path_factory.mktemp("models"))


def test_offline_features_take_musetalks_steps_from_one_30_s_encoder_run(tiny: Path) -> None:
    encoder = load_whisper_encoder(find_layout(tiny))
    pcm = np.random.default_rng(0).normal(0, 0.1, 16000 * 2).astype(np.float32)
    padded = np.zeros(16000 * 30, np.float32)
    padded[: len(pcm)] = pcm
    with torch.no_grad():
        hidden = torch.stack(encoder(torch.from_numpy(log_mel(padded)[None]), output_hidden_states=True).hidden_states, dim=2)[0].numpy()

        def features(mel: np.ndarray) -> np.ndarray:
            return WhisperFeatures(encoder)(torch.from_numpy(mel)).numpy()

        frames = offline_features(features, pcm)
    assert frames.shape == (50, 10 * 5, TINY_DIM)
    # frame 10 at 0.4 s: steps 16..25 (80 ms before to 120 ms after), all hidden states
    np.testing.assert_allclose(frames[10], hidden[16:26].reshape(50, TINY_DIM), atol=1e-4)
    # frame 0: the four steps before the clip are zeros
    assert not frames[0][: 4 * 5].any() and frames[0][4 * 5 :].any()


def test_the_comparison_runs_on_a_real_clip(tiny: Path) -> None:
    result = measure(tiny, shared_media("audio", "musetalk_eng.wav"), seconds=2.0)
    assert result["frames"] == 50 and len(result["per_hidden_state"]) == 5
    figures = result["all"]
    assert 0 < figures["relative_error_median"] < 10 and -1 <= figures["cosine_median"] <= 1
