"""``python -m stream_server export musetalk``: the official weights to ONNX, checked against PyTorch.

Writes four models into ``<models>/musetalk-onnx/`` (opset 17; a model over 2 GB gets its
weights in external data beside it, which ONNX Runtime and TensorRT read): ``whisper.onnx``,
``unet.onnx``, ``vae_encoder.onnx``, ``vae_decoder.onnx``, each with a dynamic batch
dimension, and ``export.json`` (the sizes and the error of each against PyTorch). Every model
is run by ONNX Runtime on the same random inputs as PyTorch and the largest absolute difference
is printed; above ``TOLERANCE`` the export fails.

Precision: the export is fp32. On TensorRT the UNet (most of the cost) runs in fp16, within a
batch of at most 8 (large-batch fp16 UNet engines have been seen to diverge). Everything else
stays fp32: the VAE decoder because fp16 SD-VAE decoders are known to collapse to grey faces
(GroupNorm overflows in half precision), the Whisper encoder and the VAE encoder because they
are cheap (the encoder sees 1 s of audio per frame, the VAE encoder runs only when a face is
prepared). Not yet measured on a GPU.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from engines.musetalk.audio import STEPS_PER_FRAME, WINDOW_MEL_FRAMES
from engines.musetalk.weights import Layout, WeightsError, find_layout, load_unet, load_vae, load_whisper_encoder

OPSET = 17
TOLERANCE = 1e-3  # max abs difference ONNX Runtime vs PyTorch (fp32, CPU)
CROP = 256  # the face crop MuseTalk works on
ONNX_DIR = "musetalk-onnx"
FILES = ("whisper.onnx", "unet.onnx", "vae_encoder.onnx", "vae_decoder.onnx")


@dataclass
class Exported:
    name: str
    path: Path
    max_abs_error: float
    seconds: float


def onnx_dir(layout: Layout) -> Path:
    return layout.root / ONNX_DIR


EXTERNAL_DATA_BYTES = 1_800_000_000  # past this the weights go to <name>.onnx.data (protobuf's limit is 2 GB)


def _export_one(
    module, inputs: dict[str, "torch.Tensor"], output: str, path: Path,  # noqa: F821
    external_data_bytes: int = EXTERNAL_DATA_BYTES,
) -> None:
    """Export to ``path``; weights over ``external_data_bytes`` go to one ``<name>.onnx.data``.

    PyTorch's exporter writes a model over 2 GB as one file per tensor, so it exports into a
    scratch folder and the model is saved again from there, with its weights in a single file.
    """
    import tempfile

    import onnx
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {name: {0: "batch"} for name in [*inputs, output]}
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        first = Path(scratch) / path.name
        with torch.no_grad():
            torch.onnx.export(
                module, tuple(inputs.values()), str(first), dynamo=False, opset_version=OPSET,
                input_names=list(inputs), output_names=[output], dynamic_axes=axes, do_constant_folding=True,
            )
        model = onnx.load(str(first))  # with its external data, if any
        weights = sum(len(t.raw_data) for t in model.graph.initializer)
        data = path.with_name(path.name + ".data")
        data.unlink(missing_ok=True)
        if weights > external_data_bytes:
            onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data.name, size_threshold=1024)
        else:
            onnx.save_model(model, str(path))


def _check(module, inputs: dict[str, "torch.Tensor"], path: Path) -> float:  # noqa: F821
    import torch

    from engines.runtime.session import ModelSession

    with torch.no_grad():
        expected = module(*inputs.values()).numpy()
    session = ModelSession(path, provider="cpu")
    got = next(iter(session.run({k: v.numpy() for k, v in inputs.items()}).values()))
    if got.shape != expected.shape:
        raise RuntimeError(f"{path}: output shape {got.shape}, PyTorch gives {expected.shape}")
    return float(np.max(np.abs(got - expected)))


def export_musetalk(
    models: Path | str | None = None,
    out_dir: Path | None = None,
    batch: int = 2,
    log: Callable[[str], None] = print,
) -> list[Exported]:
    """Export the four models and check each against PyTorch; raises if one is off."""
    import torch

    from engines.musetalk.model import UNetStep, VAEDecode, VAEEncode, WhisperFeatures

    torch.manual_seed(0)
    layout = find_layout(models)
    out_dir = Path(out_dir or onnx_dir(layout))
    if layout.missing():
        raise WeightsError(f"MuseTalk files missing under {layout.root}: " + "; ".join(layout.missing()))
    encoder = load_whisper_encoder(layout)
    unet = load_unet(layout)
    vae = load_vae(layout)
    layers = len(encoder.layers) + 1
    dim = unet.config.cross_attention_dim
    if encoder.config.d_model != dim:
        raise RuntimeError(
            f"{layout.whisper_config}: d_model {encoder.config.d_model} but the UNet's cross_attention_dim is {dim}"
        )
    latent = CROP // (2 ** (len(vae.config.block_out_channels) - 1))
    jobs = [
        ("whisper", WhisperFeatures(encoder), {"mel": torch.randn(batch, encoder.config.num_mel_bins, WINDOW_MEL_FRAMES)}, "hidden"),
        ("unet", UNetStep(unet, STEPS_PER_FRAME * layers), {
            "latents": torch.randn(batch, unet.config.in_channels, latent, latent),
            "audio": torch.randn(batch, STEPS_PER_FRAME * layers, dim),
        }, "latents_out"),
        ("vae_encoder", VAEEncode(vae), {"image": torch.rand(batch, 3, CROP, CROP) * 2 - 1}, "latents"),
        ("vae_decoder", VAEDecode(vae), {"latents": torch.randn(batch, vae.config.latent_channels, latent, latent)}, "image"),
    ]
    results = []
    for name, module, inputs, output in jobs:
        module.eval()
        path = out_dir / f"{name}.onnx"
        started = time.perf_counter()
        _export_one(module, inputs, output, path)
        error = _check(module, inputs, path)
        seconds = time.perf_counter() - started
        log(f"{name}: {path} ({path.stat().st_size / 1e6:.1f} MB), max abs error vs PyTorch {error:.2e} ({seconds:.1f} s)")
        if not error <= TOLERANCE:
            raise RuntimeError(f"{path}: ONNX Runtime differs from PyTorch by {error:.3g} (> {TOLERANCE})")
        results.append(Exported(name, path, error, seconds))
    (out_dir / "export.json").write_text(json.dumps({
        "opset": OPSET,
        "audio_tokens": STEPS_PER_FRAME * layers,
        "audio_dim": dim,
        "latent_size": latent,
        "crop": CROP,
        "models": {r.name: {"file": r.path.name, "max_abs_error": r.max_abs_error} for r in results},
    }, indent=2))
    return results
