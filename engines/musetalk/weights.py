"""The official MuseTalk file layout under a models directory, and its loader.

Layout (as MuseTalk's ``download_weights.sh`` puts it; the directory is ``LIPSYNC_MODELS_DIR``,
default ``./models``)::

    models/
      musetalkV15/unet.pth  musetalkV15/musetalk.json      MuseTalk 1.5 (or v1.0:
      musetalk/pytorch_model.bin  musetalk/musetalk.json    the same architecture)
      sd-vae/config.json + diffusion_pytorch_model.bin | .safetensors   stabilityai/sd-vae-ft-mse
      whisper/config.json + model.safetensors | pytorch_model.bin        openai/whisper-tiny
      face-parse-bisent/79999_iter.pth                       optional (BiSeNet face parsing)

Every problem (missing file, a file that is not a checkpoint or is cut short, wrong keys, wrong
shapes) raises :class:`WeightsError` naming the file and what is wrong with it. Loading needs
PyTorch (the ``export`` extra); serving runs the exported ONNX files instead.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

MODELS_DIR_ENV = "LIPSYNC_MODELS_DIR"

PUBLISHED = {
    "musetalk": "https://huggingface.co/TMElyralab/MuseTalk (musetalkV15/unet.pth, musetalkV15/musetalk.json)",
    "sd-vae": "https://huggingface.co/stabilityai/sd-vae-ft-mse (config.json, diffusion_pytorch_model.safetensors)",
    "whisper": "https://huggingface.co/openai/whisper-tiny (config.json, model.safetensors)",
    "face-parse-bisent": "https://github.com/zllrunning/face-parsing.PyTorch (79999_iter.pth, fetched by MuseTalk's download_weights.sh; optional)",
}

# musetalk.json as published (TMElyralab/MuseTalk, models/musetalkV15/musetalk.json; the same
# as v1.0's): 849,947,844 parameters in 686 state-dict keys
PUBLISHED_UNET_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 384,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 8,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
PUBLISHED_UNET_PARAMETERS = 849_947_844
PUBLISHED_UNET_KEYS = 686

VAE_SCALE = 0.18215  # SD-VAE latent scaling factor


class WeightsError(RuntimeError):
    """A weight file is missing or unusable; the message names the file and the problem."""


def models_dir(path: Path | str | None = None) -> Path:
    return Path(path or os.environ.get(MODELS_DIR_ENV) or "models")


@dataclass
class Layout:
    """Where each file is, or is looked for, under a models directory."""

    root: Path
    unet: Path | None = None
    unet_config: Path | None = None
    vae_config: Path | None = None
    vae: Path | None = None
    whisper_config: Path | None = None
    whisper: Path | None = None
    face_parse: Path | None = None
    looked_at: dict[str, list[Path]] = field(default_factory=dict)  # part -> paths tried

    def missing(self) -> list[str]:
        """One line per required part that is missing: the paths looked at and where to get it."""
        lines = []
        for part, found, source in (
            ("musetalk", self.unet and self.unet_config, "musetalk"),
            ("sd-vae", self.vae and self.vae_config, "sd-vae"),
            ("whisper", self.whisper and self.whisper_config, "whisper"),
        ):
            if not found:
                lines.append(f"{part}: not found (looked for {self.looked_for(part)}); published at {PUBLISHED[source]}")
        return lines

    def looked_for(self, part: str) -> str:
        """The paths tried for ``part`` as a phrase: "a with b or c with d" for MuseTalk's weight
        and config pairs, "config with weights or other weights" for the others, the one path
        for the face parser."""
        paths = [str(p) for p in self.looked_at.get(part, [])]
        if part == "musetalk":  # weights + config pairs
            return " or ".join(f"{a} with {b}" for a, b in zip(paths[::2], paths[1::2]))
        if len(paths) == 1:
            return paths[0]
        return f"{paths[0]} with " + " or ".join(paths[1:])


def _first(paths: list[Path]) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def find_layout(root: Path | str | None = None) -> Layout:
    root = models_dir(root)
    layout = Layout(root=root)
    unet_pairs = [
        (root / "musetalkV15" / "unet.pth", root / "musetalkV15" / "musetalk.json"),
        (root / "musetalk" / "pytorch_model.bin", root / "musetalk" / "musetalk.json"),
    ]
    layout.looked_at["musetalk"] = [p for pair in unet_pairs for p in pair]
    for weights, config in unet_pairs:
        if weights.is_file() and config.is_file():
            layout.unet, layout.unet_config = weights, config
            break
    vae = [root / "sd-vae" / "diffusion_pytorch_model.safetensors", root / "sd-vae" / "diffusion_pytorch_model.bin"]
    layout.vae, layout.vae_config = _first(vae), _first([root / "sd-vae" / "config.json"])
    layout.looked_at["sd-vae"] = [root / "sd-vae" / "config.json", *vae]
    whisper = [root / "whisper" / "model.safetensors", root / "whisper" / "pytorch_model.bin"]
    layout.whisper, layout.whisper_config = _first(whisper), _first([root / "whisper" / "config.json"])
    layout.looked_at["whisper"] = [root / "whisper" / "config.json", *whisper]
    layout.face_parse = _first([root / "face-parse-bisent" / "79999_iter.pth"])
    layout.looked_at["face-parse-bisent"] = [root / "face-parse-bisent" / "79999_iter.pth"]
    return layout


# ----------------------------------------------------------------------------- reading files


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise WeightsError(f"{path}: file not found")
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise WeightsError(f"{path}: expected a JSON object")
    return value


def read_state_dict(path: Path) -> dict[str, Any]:
    """A checkpoint's tensors: ``.safetensors``, or a PyTorch pickle (``.pth``/``.bin``, read with
    ``weights_only``: no code from the file runs)."""
    import torch

    if not path.is_file():
        raise WeightsError(f"{path}: file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        size = path.stat().st_size
        raise WeightsError(
            f"{path}: cannot be read as a {'safetensors' if path.suffix == '.safetensors' else 'PyTorch'} checkpoint "
            f"({size:,} bytes; truncated or corrupt download? {type(exc).__name__}: {str(exc)[:200]})"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    return state


def check_state_dict(
    path: Path, state: Mapping[str, Any], expected: Mapping[str, Any], what: str = "the architecture of its config"
) -> None:
    """Raise WeightsError naming ``path`` unless ``state`` has exactly the expected keys and shapes."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    wrong = [
        f"{k}: {tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} expected"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if wrong:
        problems.append(f"{len(wrong)} tensors of the wrong shape (e.g. {'; '.join(wrong[:3])})")
    if problems:
        raise WeightsError(
            f"{path}: does not match {what} ({len(state)} keys in the file, "
            f"{len(expected)} expected): " + "; ".join(problems)
        )


# ----------------------------------------------------------------------------- the models


def build_unet(config: Mapping[str, Any], meta: bool = False):
    """diffusers UNet2DConditionModel from a musetalk.json (on the meta device: no memory)."""
    import torch
    from diffusers import UNet2DConditionModel

    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    if meta:
        with torch.device("meta"):
            return UNet2DConditionModel(**kwargs)
    return UNet2DConditionModel(**kwargs)


def load_unet(layout: Layout):
    if layout.unet is None or layout.unet_config is None:
        raise WeightsError("; ".join(layout.missing()[:1]) or "musetalk: not found")
    config = read_json(layout.unet_config)
    try:
        unet = build_unet(config)
    except Exception as exc:
        raise WeightsError(f"{layout.unet_config}: not a UNet2DConditionModel config ({exc})") from exc
    state = read_state_dict(layout.unet)
    check_state_dict(layout.unet, state, unet.state_dict())
    unet.load_state_dict(state)
    return unet.eval()


# diffusers' pre-0.14 attention names, still in sd-vae-ft-mse's diffusion_pytorch_model.bin
_OLD_ATTENTION = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}


def _new_attention_names(state: dict[str, Any]) -> dict[str, Any]:
    renamed = {}
    for key, value in state.items():
        for old, new in _OLD_ATTENTION.items():
            if "attentions." in key and old in key:
                key = key.replace(old, new)
                if value.ndim == 4 and value.shape[-1] == 1:  # the old 1x1 conv form of a linear
                    value = value[:, :, 0, 0]
        renamed[key] = value
    return renamed


def load_vae(layout: Layout):
    from diffusers import AutoencoderKL

    if layout.vae is None or layout.vae_config is None:
        raise WeightsError(next(line for line in layout.missing() if line.startswith("sd-vae")))
    config = read_json(layout.vae_config)
    try:
        vae = AutoencoderKL(**{k: v for k, v in config.items() if not k.startswith("_")})
    except Exception as exc:
        raise WeightsError(f"{layout.vae_config}: not an AutoencoderKL config ({exc})") from exc
    state = _new_attention_names(read_state_dict(layout.vae))
    check_state_dict(layout.vae, state, vae.state_dict())
    vae.load_state_dict(state)
    return vae.eval()


def load_whisper_encoder(layout: Layout):
    """The Whisper encoder only (transformers format; the decoder's keys are ignored)."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    if layout.whisper is None or layout.whisper_config is None:
        raise WeightsError(next(line for line in layout.missing() if line.startswith("whisper")))
    read_json(layout.whisper_config)  # a clear error for a broken file
    try:
        config = WhisperConfig.from_json_file(str(layout.whisper_config))
        encoder = WhisperEncoder(config)
    except Exception as exc:
        raise WeightsError(f"{layout.whisper_config}: not a Whisper config ({exc})") from exc
    state = read_state_dict(layout.whisper)
    prefix = next((p for p in ("model.encoder.", "encoder.") if any(k.startswith(p) for k in state)), None)
    if prefix is None:
        raise WeightsError(f"{layout.whisper}: no encoder weights (no key starts with model.encoder. or encoder.)")
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    check_state_dict(layout.whisper, state, encoder.state_dict())
    encoder.load_state_dict(state)
    return encoder.eval()


def load_face_parse(layout: Layout):
    """BiSeNet from ``face-parse-bisent/79999_iter.pth`` (optional: callers check ``layout.face_parse``)."""
    from engines.musetalk.bisenet import BiSeNet

    if layout.face_parse is None:
        looked = layout.looked_at.get("face-parse-bisent", [])
        raise WeightsError(f"face-parse-bisent: not found (looked for {', '.join(map(str, looked))})")
    net = BiSeNet()
    expected = net.state_dict()
    state = read_state_dict(layout.face_parse)
    if not any(k.endswith(".num_batches_tracked") for k in state):
        # a checkpoint from before PyTorch 0.4.1 lacks these counters; inference never reads them
        expected = {k: v for k, v in expected.items() if not k.endswith(".num_batches_tracked")}
    check_state_dict(layout.face_parse, state, expected, "BiSeNet face parsing (face-parsing.PyTorch, 19 classes)")
    net.load_state_dict(state, strict=False)  # the keys are checked above
    return net.eval()
