"""A tiny MuseTalk checkpoint set in exactly the official layout and file formats, with random
weights and small channel counts: for tests and for trying the pipeline without the real files.

Same files, same key names, same formats (a PyTorch pickle for the UNet, sd-vae's
diffusion_pytorch_model.bin with diffusers' older attention names, a transformers Whisper
checkpoint); only the sizes differ. The audio feature width is 64 instead of 384.

``face_parse=True`` adds ``face-parse-bisent/79999_iter.pth``: the full BiSeNet (it has no small
form: 13.3 M parameters, 53 MB) with random weights, so its parse means nothing; it is there to
test the loading, export and mask plumbing.
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_DIM = 64

TINY_UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [32, 64],
    "center_input_sample": False,
    "cross_attention_dim": TINY_DIM,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 8,
    "layers_per_block": 1,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 8,
    "out_channels": 4,
    "sample_size": 32,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
}

TINY_VAE_CONFIG = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [8, 8, 16, 16],  # four blocks: 8x down, as sd-vae (256 px -> 32 latents)
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 256,
}

# random BiSeNet weights whose parse of the bundled astronaut marks about a third of the FaceMesh
# mask's area as skin or lips: the mask tests see a partial mask (most seeds give one class everywhere)
FACE_PARSE_SEED = 5

_NEW_ATTENTION = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}


def random_face_parse_state(seed: int = FACE_PARSE_SEED) -> dict:
    """A BiSeNet state dict with random weights and random BatchNorm statistics (so that
    exporting, which folds BatchNorm into the convolutions, is tested on more than identities)."""
    import torch

    from engines.musetalk.bisenet import BiSeNet

    generator = torch.Generator().manual_seed(seed)
    net = BiSeNet()
    state = net.state_dict()  # shares storage with the module: the loop below fills it
    for name, value in state.items():
        if name.endswith(".num_batches_tracked"):
            continue
        if value.ndim == 4:
            value.copy_(torch.randn(value.shape, generator=generator) * (2.0 / value[0].numel()) ** 0.5)
        elif name.endswith("running_mean") or name.endswith(".bias"):
            value.copy_(torch.randn(value.shape, generator=generator) * 0.1)
        else:  # BatchNorm weight and running_var
            value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
    return state


def write_tiny_set(
    root: Path, version: str = "v15", vae_format: str = "bin", seed: int = 0, face_parse: bool = False,
) -> Path:
    """Write the tiny set under ``root`` (a models directory); returns ``root``. With
    ``face_parse`` also a random-weight ``face-parse-bisent/79999_iter.pth`` (53 MB)."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from engines.musetalk.weights import build_unet

    torch.manual_seed(seed)
    root = Path(root)
    folder, weights = ("musetalkV15", "unet.pth") if version == "v15" else ("musetalk", "pytorch_model.bin")
    (root / folder).mkdir(parents=True, exist_ok=True)
    (root / folder / "musetalk.json").write_text(json.dumps(TINY_UNET_CONFIG, indent=2))
    torch.save(build_unet(TINY_UNET_CONFIG).state_dict(), root / folder / weights)

    vae = AutoencoderKL(**{k: v for k, v in TINY_VAE_CONFIG.items() if not k.startswith("_")})
    (root / "sd-vae").mkdir(parents=True, exist_ok=True)
    (root / "sd-vae" / "config.json").write_text(json.dumps(TINY_VAE_CONFIG, indent=2))
    if vae_format == "bin":  # the older attention names, as in sd-vae-ft-mse's .bin
        state = {}
        for key, value in vae.state_dict().items():
            if "attentions." in key:
                for new, old in _NEW_ATTENTION.items():
                    key = key.replace(new, old)
            state[key] = value
        torch.save(state, root / "sd-vae" / "diffusion_pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file(vae.state_dict(), str(root / "sd-vae" / "diffusion_pytorch_model.safetensors"))

    config = WhisperConfig(
        d_model=TINY_DIM, encoder_layers=4, encoder_attention_heads=2, encoder_ffn_dim=128,
        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=128, num_mel_bins=80,
        max_source_positions=1500, max_target_positions=32, vocab_size=128,
        decoder_start_token_id=1, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    WhisperForConditionalGeneration(config).save_pretrained(str(root / "whisper"))
    if face_parse:
        (root / "face-parse-bisent").mkdir(parents=True, exist_ok=True)
        torch.save(random_face_parse_state(), root / "face-parse-bisent" / "79999_iter.pth")
    return root
