"""``python -m stream_server export musetalk``: the official weights to ONNX, checked against PyTorch.

Writes four models into ``<models>/musetalk-onnx/`` (opset 17; a model over 2 GB gets its
weights in external data beside it, which ONNX Runtime and TensorRT read): ``whisper.onnx``,
``unet.onnx``, ``vae_encoder.onnx``, ``vae_decoder.onnx``, each with a dynamic batch
dimension, and ``export.json`` (the sizes and the error of each against PyTorch). Every model
is run by ONNX Runtime on the same random inputs as PyTorch and the largest absolute difference
is printed; above ``TOLERANCE`` the export fails.

With the optional ``face-parse-bisent/79999_iter.pth`` it also writes ``face_parse.onnx``
(BiSeNet: normalised RGB 1x3x512x512 -> class labels 1x512x512 uint8, the argmax in the graph);
its check is the fraction of pixels where ONNX Runtime's label equals PyTorch's, which must reach
``LABEL_AGREEMENT``. Without that file a ``face_parse.onnx`` left from an earlier export is
removed, so the backend falls back to the FaceMesh mask.

Precision: the export is fp32. On TensorRT the UNet (most of the cost) runs in fp16, within a
batch of at most 8 (large-batch fp16 UNet engines have been seen to diverge). Everything else
stays fp32: the VAE decoder because fp16 SD-VAE decoders are known to collapse to grey faces
(GroupNorm overflows in half precision), the Whisper encoder, the VAE encoder and the face
parser because they are cheap (the encoder sees 1 s of audio per frame, the VAE encoder and the
parser run only when a face is prepared). Not yet measured on a GPU.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from engines.musetalk.audio import STEPS_PER_FRAME, WINDOW_MEL_FRAMES
from engines.musetalk.parsing import SIZE as PARSE_SIZE
from engines.musetalk.weights import (
    Layout, WeightsError, find_layout, load_face_parse, load_unet, load_vae, load_whisper_encoder,
)

OPSET = 17
TOLERANCE = 1e-3  # max abs difference ONNX Runtime vs PyTorch (fp32, CPU)
CROP = 256  # the face crop MuseTalk works on
ONNX_DIR = "musetalk-onnx"
FILES = ("whisper.onnx", "unet.onnx", "vae_encoder.onnx", "vae_decoder.onnx")
FACE_PARSE = "face_parse.onnx"  # optional: only with face-parse-bisent/79999_iter.pth
LABEL_AGREEMENT = 0.999  # least fraction of pixels where ONNX Runtime's class is PyTorch's


@dataclass
class Exported:
    name: str
    path: Path
    max_abs_error: float | None  # None for the face parser, which outputs labels
    seconds: float
    label_agreement: float | None = None  # the face parser's check


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


def _report(result: Exported) -> dict[str, object]:
    if result.label_agreement is not None:
        return {"file": result.path.name, "label_agreement": result.label_agreement, "size": PARSE_SIZE}
    return {"file": result.path.name, "max_abs_error": result.max_abs_error}


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


def _fix_label_shape(path: Path) -> None:
    """Declare the labels (batch, 512, 512): the exporter leaves their height and width symbolic
    (traced from the input's shape), though they are fixed."""
    import onnx

    model = onnx.load(str(path))
    for dim in model.graph.output[0].type.tensor_type.shape.dim[1:]:
        dim.dim_value = PARSE_SIZE
    onnx.save_model(model, str(path))


def _export_face_parse(net, path: Path, batch: int, log: Callable[[str], None]) -> Exported:
    """BiSeNet to ONNX with the argmax inside; checked by how many pixels get PyTorch's label."""
    import torch

    from engines.musetalk.bisenet import FaceParseLabels
    from engines.runtime.session import ModelSession

    module = FaceParseLabels(net).eval()
    image = torch.randn(batch, 3, PARSE_SIZE, PARSE_SIZE)
    started = time.perf_counter()
    _export_one(module, {"image": image}, "labels", path)
    _fix_label_shape(path)
    with torch.no_grad():
        expected = module(image).numpy()
    got = ModelSession(path, provider="cpu").run({"image": image.numpy()})["labels"]
    if got.shape != expected.shape:
        raise RuntimeError(f"{path}: output shape {got.shape}, PyTorch gives {expected.shape}")
    agreement = float(np.mean(got == expected))
    seconds = time.perf_counter() - started
    log(f"face_parse: {path} ({path.stat().st_size / 1e6:.1f} MB), labels equal to PyTorch's on "
        f"{agreement:.4%} of pixels ({seconds:.1f} s)")
    if not agreement >= LABEL_AGREEMENT:
        raise RuntimeError(f"{path}: ONNX Runtime's labels equal PyTorch's on only {agreement:.3%} of pixels "
                           f"(< {LABEL_AGREEMENT:.1%})")
    return Exported("face_parse", path, None, seconds, agreement)


def export_musetalk(
    models: Path | str | None = None,
    out_dir: Path | None = None,
    batch: int = 2,
    log: Callable[[str], None] = print,
) -> list[Exported]:
    """Export the four models (and the face parser if its file is there), check each against
    PyTorch; raises if one is off."""
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
    parser = load_face_parse(layout) if layout.face_parse else None  # a broken file fails before the long exports
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
    parse_path = out_dir / FACE_PARSE
    if parser is not None:
        results.append(_export_face_parse(parser, parse_path, batch, log))
    else:
        parse_path.unlink(missing_ok=True)  # a stale one must not outlive its weights
        log(f"face_parse: {layout.looked_at['face-parse-bisent'][0]} not found; the backend blends through the FaceMesh mask")
    (out_dir / "export.json").write_text(json.dumps({
        "opset": OPSET,
        "audio_tokens": STEPS_PER_FRAME * layers,
        "audio_dim": dim,
        "latent_size": latent,
        "crop": CROP,
        "models": {r.name: _report(r) for r in results},
    }, indent=2))
    return results
