"""How far MuseTalk's streaming audio features are from its offline ones, on a real clip.

Runs the Whisper encoder from a models directory (the official layout; needs the export extra:
torch, transformers) both ways on the same speech (see ``engines/musetalk/offline.py``) and
reports the relative L2 error and the cosine similarity per frame, overall and per hidden state.

    python -m benchmarks.whisper_streaming [--models models] [--audio CLIP] [--seconds 20]

The figure only means something with the real whisper-tiny weights: random weights (the test
set) exercise the procedure, not the model.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.results_io import ROOT, save
from engines.media_io import load_audio
from engines.musetalk.offline import compare, offline_features, streaming_features
from engines.musetalk.weights import find_layout, load_whisper_encoder

CLIP = ROOT.parent / "shared" / "testdata" / "audio" / "musetalk_eng.wav"


def measure(models: Path | None, audio: Path, seconds: float) -> dict[str, Any]:
    import torch

    from engines.musetalk.model import WhisperFeatures

    layout = find_layout(models)
    module = WhisperFeatures(load_whisper_encoder(layout)).eval()

    def features(mel: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(mel)).numpy()

    pcm = load_audio(audio, 16000, seconds)
    started = time.perf_counter()
    offline = offline_features(features, pcm)
    streaming = streaming_features(features, pcm)
    layers = module.encoder.config.encoder_layers + 1
    return {
        "command": f"python -m benchmarks.whisper_streaming --audio {audio.name} --seconds {seconds:g}",
        "audio": audio.name,
        "seconds": round(len(pcm) / 16000, 2),
        "whisper": str(layout.whisper),
        "whisper_config": {"d_model": module.encoder.config.d_model, "encoder_layers": module.encoder.config.encoder_layers},
        **compare(streaming, offline, layers),
        "wall_s": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=None, help="models directory (default LIPSYNC_MODELS_DIR or ./models)")
    parser.add_argument("--audio", type=Path, default=CLIP)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--name", default="whisper_streaming")
    args = parser.parse_args()
    result = measure(args.models, args.audio, args.seconds)
    print(save(args.name, result))
    print({k: result[k] for k in ("frames", "all")})


if __name__ == "__main__":
    main()
