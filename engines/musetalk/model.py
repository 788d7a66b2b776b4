"""The MuseTalk networks as PyTorch modules with the inputs and outputs that are exported.

- ``WhisperFeatures``: log-mel window (B, 80, T) -> every hidden state of the encoder stacked,
  (B, T/2, layers + 1, dim), exactly what ``WhisperEncoder(output_hidden_states=True)`` gives
  (the last one after the final layer norm) but for any T up to 3000, not only 30 s.
- ``UNetStep``: one UNet step at t = 0: latents (B, 8, 32, 32) (masked face + reference) and
  audio tokens (B, 50, 384) -> latents (B, 4, 32, 32); the positional encoding is added inside.
- ``VAEEncode``: RGB (B, 3, 256, 256) in [-1, 1] -> latents * 0.18215 (the posterior mean, where
  MuseTalk samples: the sd-vae-ft-mse posterior's spread is negligible and a mean is repeatable).
- ``VAEDecode``: latents -> RGB (B, 3, 256, 256) in [0, 1].
"""

from __future__ import annotations

import torch
from torch import nn

from engines.musetalk.audio import positional_encoding
from engines.musetalk.weights import VAE_SCALE


class WhisperFeatures(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        x = nn.functional.gelu(enc.conv1(mel))
        x = nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
        x = x + enc.embed_positions.weight[: x.shape[1]]
        states = [x]
        for layer in enc.layers:
            out = layer(x, attention_mask=None, layer_head_mask=None)
            x = out[0] if isinstance(out, tuple) else out
            states.append(x)
        states[-1] = enc.layer_norm(x)
        return torch.stack(states, dim=2)


class UNetStep(nn.Module):
    def __init__(self, unet: nn.Module, tokens: int = 50) -> None:
        super().__init__()
        self.unet = unet
        dim = unet.config.cross_attention_dim
        self.register_buffer("pe", torch.from_numpy(positional_encoding(tokens, dim))[None], persistent=False)

    def forward(self, latents: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        timestep = torch.zeros((), dtype=torch.long)
        return self.unet(latents, timestep, encoder_hidden_states=audio + self.pe[:, : audio.shape[1]]).sample


class VAEEncode(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(image).latent_dist.mean * VAE_SCALE


class VAEDecode(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return (self.vae.decode(latents / VAE_SCALE).sample / 2 + 0.5).clamp(0, 1)
