"""Ditto's PyTorch networks at their published sizes, for loading the published ``.pth`` files,
exporting random-weight ONNX graphs and measuring speed. OFFLINE ONLY: this is the one vasa
module that imports torch, and nothing on the serving path may import it.

Written from the definitions in antgroup/ditto-talkinghead@e9191cf (``core/models/modules``),
which are LivePortrait's (KwaiVGI/LivePortrait@1986663 ``src/modules``, sizes from
``src/config/models.yaml``) plus Ditto's LMDM. Submodule and parameter NAMES follow those files,
so the state-dict keys and shapes are the published checkpoints' (``ditto_pytorch/models/*.pth``);
the code is our own.

* :class:`AppearanceFeatureExtractor`  appearance_extractor.pth  image -> pred (B,32,16,64,64)
* :class:`MotionExtractor`             motion_extractor.pth      image -> pitch yaw roll t exp scale kp
* :class:`WarpingNetwork`              warp_network.pth          feature_3d kp_source kp_driving -> out
* :class:`SPADEDecoder`                decoder.pth               feature -> output (B,3,512,512)
* :class:`StitchingNetwork`            stitch_network.pth        kp_source kp_driving -> out (stitched kp)
* :class:`LMDM`                        lmdm_v0.4_hubert.pth      x cond_frame cond time_cond -> pred_noise x_start

Public helpers: :func:`build`, :func:`load_published`, :func:`published_layout_checkpoint`,
:func:`export_onnx`, :func:`state_bytes`; :data:`NETWORKS` holds each network's file names, ONNX
signature (spec vasa.md §2.1) and published size (§1.1).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ONNX_OPSET = 17

# ----------------------------------------------------------------------------- shared blocks
# (names as in core/models/modules/util.py)


def coordinate_grid(d: int, h: int, w: int, ref: Tensor) -> Tensor:
    """(d, h, w, 3) grid of (x, y, z) in [-1, 1]: x along w, y along h, z along d (util.make_coordinate_grid)."""
    def axis(n: int) -> Tensor:
        return torch.arange(n, dtype=ref.dtype, device=ref.device) / (n - 1) * 2 - 1

    z, y, x = torch.meshgrid(axis(d), axis(h), axis(w), indexing="ij")
    return torch.stack([x, y, z], dim=-1)


class SameBlock2d(nn.Module):
    """conv 3x3 -> BatchNorm -> ReLU (or LeakyReLU); util.SameBlock2d."""

    def __init__(self, cin: int, cout: int, lrelu: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = nn.BatchNorm2d(cout)
        self.ac = nn.LeakyReLU() if lrelu else nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.ac(self.norm(self.conv(x)))


class DownBlock2d(nn.Module):
    """conv 3x3 -> BatchNorm -> ReLU -> 2x2 average pool; util.DownBlock2d."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = nn.BatchNorm2d(cout)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(F.relu(self.norm(self.conv(x))))


class DownBlock3d(nn.Module):
    """conv3d 3x3x3 -> BatchNorm3d -> ReLU -> (1,2,2) average pool; util.DownBlock3d."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 3, padding=1)
        self.norm = nn.BatchNorm3d(cout)
        self.pool = nn.AvgPool3d((1, 2, 2))

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(F.relu(self.norm(self.conv(x))))


class UpBlock3d(nn.Module):
    """(1,2,2) nearest upsample -> conv3d -> BatchNorm3d -> ReLU; util.UpBlock3d."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 3, padding=1)
        self.norm = nn.BatchNorm3d(cout)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0))
        return F.relu(self.norm(self.conv(x)))


class ResBlock3d(nn.Module):
    """Pre-activation residual block, BN -> ReLU -> conv, twice; util.ResBlock3d."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1)
        self.norm1 = nn.BatchNorm3d(channels)
        self.norm2 = nn.BatchNorm3d(channels)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        return x + self.conv2(F.relu(self.norm2(out)))


# ----------------------------------------------------------------------------- appearance


class AppearanceFeatureExtractor(nn.Module):
    """image (B,3,256,256) in [0,1] -> feature volume f_s (B,32,16,64,64).

    Matches core/models/modules/appearance_feature_extractor.py (LivePortrait's F).
    """

    input_names = ("image",)
    output_names = ("pred",)

    def __init__(self, image_channel: int = 3, block_expansion: int = 64, num_down_blocks: int = 2,
                 max_features: int = 512, reshape_channel: int = 32, reshape_depth: int = 16,
                 num_resblocks: int = 6, image_size: int = 256) -> None:
        super().__init__()
        self.reshape_channel, self.reshape_depth = reshape_channel, reshape_depth
        self.image_channel, self.image_size = image_channel, image_size
        self.first = SameBlock2d(image_channel, block_expansion)
        widths = [min(max_features, block_expansion * 2 ** i) for i in range(num_down_blocks + 1)]
        self.down_blocks = nn.ModuleList(DownBlock2d(a, b) for a, b in zip(widths, widths[1:]))
        self.second = nn.Conv2d(widths[-1], max_features, 1)
        self.resblocks_3d = nn.Sequential(OrderedDict(
            (f"3dr{i}", ResBlock3d(reshape_channel)) for i in range(num_resblocks)))

    def forward(self, image: Tensor) -> Tensor:
        out = self.first(image)
        for block in self.down_blocks:
            out = block(out)
        out = self.second(out)
        bs, _, h, w = out.shape
        return self.resblocks_3d(out.view(bs, self.reshape_channel, self.reshape_depth, h, w))

    def example_inputs(self, batch: int = 1) -> tuple[Tensor, ...]:
        return (torch.rand(batch, self.image_channel, self.image_size, self.image_size),)


# ----------------------------------------------------------------------------- motion (ConvNeXt-V2)


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over dim 1 of (B,C,H,W); util.LayerNorm(data_format="channels_first")."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class GRN(nn.Module):
    """Global response normalisation on channels-last input; util.GRN."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: Tensor) -> Tensor:
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 -> LN -> 4x MLP with GELU and GRN, residual; convnextv2.Block."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtV2(nn.Module):
    """ConvNeXt-V2 with LivePortrait's 7 linear heads; core/models/modules/convnextv2.py."""

    def __init__(self, in_chans: int = 3, depths: tuple[int, ...] = (3, 3, 9, 3),
                 dims: tuple[int, ...] = (96, 192, 384, 768), num_kp: int = 21, num_bins: int = 66) -> None:
        super().__init__()
        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(nn.Sequential(
            nn.Conv2d(in_chans, dims[0], 4, stride=4), ChannelsFirstLayerNorm(dims[0])))
        for a, b in zip(dims, dims[1:]):
            self.downsample_layers.append(nn.Sequential(ChannelsFirstLayerNorm(a), nn.Conv2d(a, b, 2, stride=2)))
        self.stages = nn.ModuleList(nn.Sequential(*(ConvNeXtBlock(d) for _ in range(n))) for d, n in zip(dims, depths))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        # registration order as in convnextv2.py (kp, scale, pitch, yaw, roll, t, exp)
        self.fc_kp = nn.Linear(dims[-1], 3 * num_kp)
        self.fc_scale = nn.Linear(dims[-1], 1)
        self.fc_pitch = nn.Linear(dims[-1], num_bins)
        self.fc_yaw = nn.Linear(dims[-1], num_bins)
        self.fc_roll = nn.Linear(dims[-1], num_bins)
        self.fc_t = nn.Linear(dims[-1], 3)
        self.fc_exp = nn.Linear(dims[-1], 3 * num_kp)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        x = self.norm(x.mean([-2, -1]))
        return (self.fc_pitch(x), self.fc_yaw(x), self.fc_roll(x), self.fc_t(x),
                self.fc_exp(x), self.fc_scale(x), self.fc_kp(x))


class MotionExtractor(nn.Module):
    """image (B,3,256,256) -> pitch, yaw, roll (B,66) bin logits, t (B,3), exp (B,63), scale (B,1),
    kp (B,63), in that order. Matches core/models/modules/motion_extractor.py (LivePortrait's M,
    backbone convnextv2_tiny)."""

    input_names = ("image",)
    output_names = ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")

    def __init__(self, num_kp: int = 21, depths: tuple[int, ...] = (3, 3, 9, 3),
                 dims: tuple[int, ...] = (96, 192, 384, 768), image_size: int = 256) -> None:
        super().__init__()
        self.image_size = image_size
        self.detector = ConvNeXtV2(depths=depths, dims=dims, num_kp=num_kp)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        return self.detector(image)

    def example_inputs(self, batch: int = 1) -> tuple[Tensor, ...]:
        return (torch.rand(batch, 3, self.image_size, self.image_size),)


# ----------------------------------------------------------------------------- warping


class HourglassEncoder(nn.Module):
    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int) -> None:
        super().__init__()
        widths = [in_features] + [min(max_features, block_expansion * 2 ** (i + 1)) for i in range(num_blocks)]
        self.down_blocks = nn.ModuleList(DownBlock3d(a, b) for a, b in zip(widths, widths[1:]))

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class HourglassDecoder(nn.Module):
    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int) -> None:
        super().__init__()
        blocks = []
        for i in reversed(range(num_blocks)):
            cin = (1 if i == num_blocks - 1 else 2) * min(max_features, block_expansion * 2 ** (i + 1))
            blocks.append(UpBlock3d(cin, min(max_features, block_expansion * 2 ** i)))
        self.up_blocks = nn.ModuleList(blocks)
        self.out_filters = block_expansion + in_features
        self.conv = nn.Conv3d(self.out_filters, self.out_filters, 3, padding=1)
        self.norm = nn.BatchNorm3d(self.out_filters)

    def forward(self, skips: list[Tensor]) -> Tensor:
        out = skips[-1]
        for block, skip in zip(self.up_blocks, reversed(skips[:-1])):
            out = torch.cat([block(out), skip], dim=1)
        return F.relu(self.norm(self.conv(out)))


class Hourglass3D(nn.Module):
    """3-D U-Net (encoder of DownBlock3d, decoder of UpBlock3d with skips); util.Hourglass."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3, max_features: int = 256) -> None:
        super().__init__()
        self.encoder = HourglassEncoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = HourglassDecoder(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


class DenseMotionNetwork(nn.Module):
    """Sparse keypoint motion -> dense deformation (B,D,H,W,3) and occlusion map (B,1,H,W).

    Matches core/models/modules/dense_motion.py: compress 32->4 channels, warp the compressed
    volume by each of the 1+num_kp sparse motions (GridSample #1), add Gaussian heatmap
    differences (variance 0.01), hourglass, softmax mask over the motions, occlusion conv.
    """

    def __init__(self, block_expansion: int = 32, num_blocks: int = 5, max_features: int = 1024,
                 num_kp: int = 21, feature_channel: int = 32, reshape_depth: int = 16, compress: int = 4,
                 estimate_occlusion_map: bool = True) -> None:
        super().__init__()
        self.hourglass = Hourglass3D(block_expansion, (num_kp + 1) * (compress + 1), num_blocks, max_features)
        self.mask = nn.Conv3d(self.hourglass.out_filters, num_kp + 1, 7, padding=3)
        self.compress = nn.Conv3d(feature_channel, compress, 1)
        self.norm = nn.BatchNorm3d(compress)
        self.num_kp = num_kp
        self.occlusion = (nn.Conv2d(self.hourglass.out_filters * reshape_depth, 1, 7, padding=3)
                          if estimate_occlusion_map else None)

    def forward(self, feature: Tensor, kp_driving: Tensor, kp_source: Tensor) -> tuple[Tensor, Tensor | None]:
        feature = F.relu(self.norm(self.compress(feature)))
        bs, c, d, h, w = feature.shape
        k = self.num_kp + 1
        grid = coordinate_grid(d, h, w, kp_source)  # (d,h,w,3)
        kd = kp_driving.view(bs, self.num_kp, 1, 1, 1, 3)
        ks = kp_source.view(bs, self.num_kp, 1, 1, 1, 3)
        # background (identity) + one motion per keypoint: x -> x - kp_driving + kp_source
        motions = torch.cat([grid.expand(bs, 1, d, h, w, 3), grid.unsqueeze(0) - kd + ks], dim=1)
        # GridSample #1: every motion applied to the compressed volume
        repeated = feature.unsqueeze(1).expand(bs, k, c, d, h, w).reshape(bs * k, c, d, h, w)
        deformed = F.grid_sample(repeated, motions.reshape(bs * k, d, h, w, 3), align_corners=False)
        deformed = deformed.view(bs, k, c, d, h, w)
        # Gaussian heatmaps at the keypoints, driving minus source, zeros for the background
        def gaussian(kp: Tensor) -> Tensor:
            return torch.exp(-0.5 * ((grid - kp) ** 2).sum(-1) / 0.01)

        heat = gaussian(kd) - gaussian(ks)  # (bs,num_kp,d,h,w)
        heat = torch.cat([torch.zeros_like(heat[:, :1]), heat], dim=1).unsqueeze(2)
        prediction = self.hourglass(torch.cat([heat, deformed], dim=2).view(bs, k * (c + 1), d, h, w))
        mask = F.softmax(self.mask(prediction), dim=1).unsqueeze(-1)  # (bs,k,d,h,w,1)
        deformation = (motions * mask).sum(dim=1)  # (bs,d,h,w,3)
        occlusion = None
        if self.occlusion is not None:
            occlusion = torch.sigmoid(self.occlusion(prediction.reshape(bs, -1, h, w)))
        return deformation, occlusion


class WarpingNetwork(nn.Module):
    """feature_3d (B,32,16,64,64), kp_source, kp_driving (B,21,3) -> out (B,256,64,64).

    Matches core/models/modules/warping_network.py (LivePortrait's W, with
    ``dense_motion_params`` of models.yaml): dense motion, GridSample #2 of the feature volume,
    reshape to (B,512,64,64), SameBlock2d(lrelu) 512->256, 1x1 conv, times the occlusion map.
    """

    input_names = ("feature_3d", "kp_source", "kp_driving")
    output_names = ("out",)

    def __init__(self, num_kp: int = 21, block_expansion: int = 64, max_features: int = 512,
                 num_down_blocks: int = 2, reshape_channel: int = 32, estimate_occlusion_map: bool = True,
                 dense_motion_params: Mapping[str, int] | None = None, spatial: int = 64) -> None:
        super().__init__()
        dense = {"block_expansion": 32, "max_features": 1024, "num_blocks": 5, "reshape_depth": 16,
                 "compress": 4, **(dense_motion_params or {})}
        self.num_kp, self.reshape_channel, self.spatial = num_kp, reshape_channel, spatial
        self.depth = dense["reshape_depth"]
        self.dense_motion_network = DenseMotionNetwork(
            num_kp=num_kp, feature_channel=reshape_channel, estimate_occlusion_map=estimate_occlusion_map, **dense)
        width = block_expansion * 2 ** num_down_blocks
        self.third = SameBlock2d(max_features, width, lrelu=True)
        self.fourth = nn.Conv2d(width, width, 1)

    def forward(self, feature_3d: Tensor, kp_source: Tensor, kp_driving: Tensor) -> Tensor:
        deformation, occlusion = self.dense_motion_network(feature_3d, kp_driving, kp_source)
        out = F.grid_sample(feature_3d, deformation, align_corners=False)  # GridSample #2
        bs, c, d, h, w = out.shape
        out = self.fourth(self.third(out.view(bs, c * d, h, w)))
        return out if occlusion is None else out * occlusion

    def example_inputs(self, batch: int = 1) -> tuple[Tensor, ...]:
        s = self.spatial
        kp = torch.rand(batch, self.num_kp, 3) - 0.5
        return (torch.randn(batch, self.reshape_channel, self.depth, s, s), kp,
                kp + 0.02 * torch.randn(batch, self.num_kp, 3))


# ----------------------------------------------------------------------------- SPADE decoder


class SpectralNormConv2d(nn.Module):
    """Conv2d whose weight is ``weight_orig / sigma``, sigma = u . (W v) from the stored u, v.

    Keys ``weight_orig``, ``bias``, ``weight_u``, ``weight_v``: what ``torch.nn.utils.spectral_norm``
    puts in a state dict, and so what decoder.pth holds. Only its eval behaviour (no power
    iteration) is implemented: that is what inference runs.
    """

    def __init__(self, cin: int, cout: int, kernel_size: int, padding: int = 0, bias: bool = True) -> None:
        super().__init__()
        self.padding = padding
        self.weight_orig = nn.Parameter(torch.empty(cout, cin, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(cout)) if bias else None
        self.register_buffer("weight_u", torch.empty(cout))
        self.register_buffer("weight_v", torch.empty(cin * kernel_size * kernel_size))
        if self.weight_orig.device.type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, iterations: int = 30) -> None:
        # Conv2d's default init, then power iteration so sigma is the top singular value, as
        # after training (random u, v would give a sigma near 0 and exploding weights)
        nn.init.kaiming_uniform_(self.weight_orig, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight_orig[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)
        mat = self.weight_orig.flatten(1)
        u = F.normalize(torch.randn(mat.shape[0]), dim=0, eps=1e-12)
        v = F.normalize(mat.t() @ u, dim=0, eps=1e-12)
        for _ in range(iterations):
            v = F.normalize(mat.t() @ u, dim=0, eps=1e-12)
            u = F.normalize(mat @ v, dim=0, eps=1e-12)
        self.weight_u.copy_(u)
        self.weight_v.copy_(v)

    def forward(self, x: Tensor) -> Tensor:
        # u . (W v) as elementwise products: autocast leaves those in fp32 (mv/dot it would cast)
        sigma = (self.weight_u * (self.weight_orig.flatten(1) * self.weight_v).sum(1)).sum()
        return F.conv2d(x, self.weight_orig / sigma, self.bias, padding=self.padding)


class SPADE(nn.Module):
    """Instance norm modulated by gamma/beta convs of the segmentation map; util.SPADE."""

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 128) -> None:
        super().__init__()
        self.param_free_norm = nn.InstanceNorm2d(norm_nc, affine=False)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, 3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, 3, padding=1)

    def forward(self, x: Tensor, seg: Tensor) -> Tensor:
        seg = F.interpolate(seg, size=x.shape[2:], mode="nearest")
        actv = self.mlp_shared(seg)
        return self.param_free_norm(x) * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResnetBlock(nn.Module):
    """SPADE residual block with spectral-normed convs; util.SPADEResnetBlock ("spadespectralinstance")."""

    def __init__(self, fin: int, fout: int, label_nc: int) -> None:
        super().__init__()
        middle = min(fin, fout)
        self.learned_shortcut = fin != fout
        self.conv_0 = SpectralNormConv2d(fin, middle, 3, padding=1)
        self.conv_1 = SpectralNormConv2d(middle, fout, 3, padding=1)
        if self.learned_shortcut:
            self.conv_s = SpectralNormConv2d(fin, fout, 1, bias=False)
        self.norm_0 = SPADE(fin, label_nc)
        self.norm_1 = SPADE(middle, label_nc)
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, label_nc)

    def forward(self, x: Tensor, seg: Tensor) -> Tensor:
        shortcut = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return shortcut + dx


class SPADEDecoder(nn.Module):
    """feature (B,256,64,64) -> output (B,3,512,512), sigmoid in [0,1].

    Matches core/models/modules/spade_generator.py (LivePortrait's G, upscale 2): conv 256->512,
    G_middle_0..5, 2x nearest + up_0 (->256), 2x nearest + up_1 (->64), conv -> 12 channels,
    PixelShuffle(2), sigmoid.
    """

    input_names = ("feature",)
    output_names = ("output",)

    def __init__(self, upscale: int = 2, max_features: int = 512, block_expansion: int = 64,
                 out_channels: int = 64, num_down_blocks: int = 2, spatial: int = 64) -> None:
        super().__init__()
        cin = min(max_features, block_expansion * 2 ** num_down_blocks)  # 256
        self.input_channels, self.spatial = cin, spatial
        self.fc = nn.Conv2d(cin, 2 * cin, 3, padding=1)
        for i in range(6):
            self.add_module(f"G_middle_{i}", SPADEResnetBlock(2 * cin, 2 * cin, cin))
        self.up_0 = SPADEResnetBlock(2 * cin, cin, cin)
        self.up_1 = SPADEResnetBlock(cin, out_channels, cin)
        self.up = nn.Upsample(scale_factor=2)
        if upscale is None or upscale <= 1:
            self.conv_img = nn.Conv2d(out_channels, 3, 3, padding=1)
        else:
            self.conv_img = nn.Sequential(nn.Conv2d(out_channels, 3 * upscale * upscale, 3, padding=1),
                                          nn.PixelShuffle(upscale))

    def forward(self, feature: Tensor) -> Tensor:
        x = self.fc(feature)
        for i in range(6):
            x = getattr(self, f"G_middle_{i}")(x, feature)
        x = self.up_0(self.up(x), feature)
        x = self.up_1(self.up(x), feature)
        return torch.sigmoid(self.conv_img(F.leaky_relu(x, 0.2)))

    def example_inputs(self, batch: int = 1) -> tuple[Tensor, ...]:
        return (torch.randn(batch, self.input_channels, self.spatial, self.spatial),)


# ----------------------------------------------------------------------------- stitching

# LivePortrait's three MLPs (models.yaml stitching_retargeting_module_params); all three are in
# stitch_network.pth, Ditto runs only 'retarget_shoulder' (the stitching one)
STITCH_MLPS: dict[str, tuple[int, tuple[int, ...], int]] = {
    "retarget_shoulder": (126, (128, 128, 64), 65),
    "retarget_mouth": (65, (128, 128, 64), 63),
    "retarget_eye": (66, (256, 256, 128, 128, 64), 63),
}


def _mlp(input_size: int, hidden: tuple[int, ...], output_size: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip((input_size,) + hidden, hidden):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(hidden[-1], output_size))


class StitchingNetwork(nn.Module):
    """kp_source, kp_driving (B,21,3) -> out (B,21,3): the driving keypoints STITCHED, not the delta.

    Matches core/models/modules/stitching_network.py: MLP 126->128->128->64->65 on the two
    flattened keypoint sets; delta[:63] is added to every keypoint, delta[63:65] to x and y.
    """

    input_names = ("kp_source", "kp_driving")
    output_names = ("out",)

    def __init__(self, input_size: int = 126, hidden_sizes: tuple[int, ...] = (128, 128, 64),
                 output_size: int = 65) -> None:
        super().__init__()
        self.mlp = _mlp(input_size, tuple(hidden_sizes), output_size)
        self.num_kp = input_size // 6

    def forward(self, kp_source: Tensor, kp_driving: Tensor) -> Tensor:
        bs, n = kp_source.shape[:2]
        delta = self.mlp(torch.cat([kp_source.reshape(bs, -1), kp_driving.reshape(bs, -1)], dim=1))
        exp = delta[:, : 3 * n].reshape(bs, n, 3)
        txty = F.pad(delta[:, 3 * n: 3 * n + 2], (0, 1)).reshape(bs, 1, 3)  # (tx, ty, 0)
        return kp_driving + exp + txty

    def example_inputs(self, batch: int = 1) -> tuple[Tensor, ...]:
        kp = 0.3 * torch.randn(batch, self.num_kp, 3)
        return kp, kp + 0.02 * torch.randn(batch, self.num_kp, 3)


# ----------------------------------------------------------------------------- LMDM


class RotaryEmbedding(nn.Module):
    """Rotary position embedding over the full feature width, adjacent pairs rotated together
    (lmdm_modules/rotary_embedding_torch.py, freqs_for="lang", theta 10000). ``freqs`` is a
    persistent buffer, so it is in the checkpoint once for every module that holds this one."""

    def __init__(self, dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        self.register_buffer("freqs", 1.0 / theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))

    def rotate(self, x: Tensor) -> Tensor:
        """x (..., n, dim) rotated by position 0..n-1 along dim -2."""
        pos = torch.arange(x.shape[-2], device=x.device, dtype=self.freqs.dtype)
        angles = pos[:, None] * self.freqs[None, :]
        angles = torch.stack([angles, angles], dim=-1).flatten(-2).to(x.dtype)  # each angle twice
        pairs = x.unflatten(-1, (-1, 2))
        rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
        return x * angles.cos() + rotated * angles.sin()


class DenseFiLM(nn.Module):
    """Mish -> Linear(d, 2d): a (scale, shift) pair per batch item; lmdm_modules/model.py DenseFiLM."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Mish(), nn.Linear(dim, dim * 2))

    def forward(self, t: Tensor) -> tuple[Tensor, Tensor]:
        scale, shift = self.block(t).unsqueeze(1).chunk(2, dim=-1)
        return scale, shift


def _film(x: Tensor, scale_shift: tuple[Tensor, Tensor]) -> Tensor:
    scale, shift = scale_shift
    return (scale + 1) * x + shift


class TransformerEncoderLayer(nn.Module):
    """Pre-norm self-attention (rotary on q, k) + GELU FF; lmdm_modules/model.py TransformerEncoderLayer."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float,
                 rotary: RotaryEmbedding | None) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.rotary = rotary

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        qk = self.rotary.rotate(h) if self.rotary is not None else h
        x = x + self.dropout1(self.self_attn(qk, qk, h, need_weights=False)[0])
        return x + self.dropout2(self.linear2(self.dropout(F.gelu(self.linear1(self.norm2(x))))))


class FiLMTransformerDecoderLayer(nn.Module):
    """Pre-norm self-attention, cross-attention and FF, each FiLM-ed by the time+condition vector;
    lmdm_modules/model.py FiLMTransformerDecoderLayer."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float,
                 rotary: RotaryEmbedding | None) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.film1 = DenseFiLM(d_model)
        self.film2 = DenseFiLM(d_model)
        self.film3 = DenseFiLM(d_model)
        self.rotary = rotary

    def _rot(self, x: Tensor) -> Tensor:
        return self.rotary.rotate(x) if self.rotary is not None else x

    def forward(self, x: Tensor, memory: Tensor, t: Tensor) -> Tensor:
        h = self.norm1(x)
        qk = self._rot(h)
        x = x + _film(self.dropout1(self.self_attn(qk, qk, h, need_weights=False)[0]), self.film1(t))
        h = self.norm2(x)
        x = x + _film(self.dropout2(self.multihead_attn(self._rot(h), self._rot(memory), memory,
                                                         need_weights=False)[0]), self.film2(t))
        ff = self.linear2(self.dropout(F.gelu(self.linear1(self.norm3(x)))))
        return x + _film(self.dropout3(ff), self.film3(t))


class DecoderLayerStack(nn.Module):
    def __init__(self, stack: nn.ModuleList) -> None:
        super().__init__()
        self.stack = stack

    def forward(self, x: Tensor, cond: Tensor, t: Tensor) -> Tensor:
        for layer in self.stack:
            x = layer(x, cond, t)
        return x


def _sinusoidal(times: Tensor, dim: int) -> Tensor:
    """Diffusion-step embedding [sin | cos] (lmdm_modules/utils.py SinusoidalPosEmb)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=times.device, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    angles = times.to(torch.float32)[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class TimeMLP(nn.Module):
    """SinusoidalPosEmb -> Linear(d, 4d) -> Mish, with the Linear at index 1 as in the original Sequential."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.add_module("1", nn.Linear(dim, dim * 4))

    def forward(self, times: Tensor) -> Tensor:
        linear = getattr(self, "1")
        return F.mish(linear(_sinusoidal(times, self.dim).to(linear.weight.dtype)))


class MotionDecoder(nn.Module):
    """Ditto's denoiser: (x_t, cond_frame, cond, t) -> predicted x0 (B,80,265).

    Matches core/models/modules/lmdm_modules/model.py MotionDecoder as LMDM.py builds it: latent
    512, FF 1024, 8 FiLM decoder layers, 8 heads, GELU, rotary embedding, a 2-layer condition
    encoder, learned null embeddings for the unconditional branch.
    """

    def __init__(self, nfeats: int = 265, seq_len: int = 80, latent_dim: int = 512, ff_size: int = 1024,
                 num_layers: int = 8, num_heads: int = 8, dropout: float = 0.1, cond_feature_dim: int = 1103) -> None:
        super().__init__()
        d = latent_dim
        self.rotary = RotaryEmbedding(d)
        self.time_mlp = TimeMLP(d)
        self.to_time_cond = nn.Sequential(nn.Linear(d * 4, d))
        self.to_time_tokens = nn.Sequential(nn.Linear(d * 4, d * 2))  # 2 time tokens
        self.null_cond_embed = nn.Parameter(torch.randn(1, seq_len, d))
        self.null_cond_hidden = nn.Parameter(torch.randn(1, d))
        self.norm_cond = nn.LayerNorm(d)
        self.input_projection = nn.Linear(nfeats * 2, d)
        self.cond_encoder = nn.Sequential(*(
            TransformerEncoderLayer(d, num_heads, ff_size, dropout, self.rotary) for _ in range(2)))
        self.cond_projection = nn.Linear(cond_feature_dim, d)
        self.non_attn_cond_projection = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.seqTransDecoder = DecoderLayerStack(nn.ModuleList(
            FiLMTransformerDecoderLayer(d, num_heads, ff_size, dropout, self.rotary) for _ in range(num_layers)))
        self.final_layer = nn.Linear(d, nfeats)
        self.latent_dim = d

    def forward(self, x: Tensor, cond_frame: Tensor, cond: Tensor, times: Tensor, keep_cond: bool = True) -> Tensor:
        """One pass; ``keep_cond=False`` is the unconditional branch (cond_drop_prob=1)."""
        bs = x.shape[0]
        x = self.input_projection(torch.cat([x, cond_frame.unsqueeze(1).expand(-1, x.shape[1], -1)], dim=-1))
        tokens = self.cond_encoder(self.cond_projection(cond))
        # the graph computes the encoder in both branches, as Ditto's exported one does
        keep = (torch.ones if keep_cond else torch.zeros)((bs, 1, 1), dtype=torch.bool, device=x.device)
        tokens = torch.where(keep, tokens, self.null_cond_embed.to(tokens.dtype))
        cond_hidden = self.non_attn_cond_projection(tokens.mean(dim=-2))
        t_hidden = self.time_mlp(times)
        t = self.to_time_cond(t_hidden)
        t_tokens = self.to_time_tokens(t_hidden).view(bs, 2, self.latent_dim)
        t = t + torch.where(keep[:, 0], cond_hidden, self.null_cond_hidden.to(t.dtype))
        memory = self.norm_cond(torch.cat([tokens, t_tokens], dim=-2))
        return self.final_layer(self.seqTransDecoder(x, memory, t))

    def guided_forward(self, x: Tensor, cond_frame: Tensor, cond: Tensor, times: Tensor, weight: float) -> Tensor:
        unc = self.forward(x, cond_frame, cond, times, keep_cond=False)
        conditioned = self.forward(x, cond_frame, cond, times, keep_cond=True)
        return unc + (conditioned - unc) * weight


def cosine_alphas_cumprod(n_timestep: int = 1000, s: float = 8e-3) -> Tensor:
    """alphas_cumprod of the cosine schedule, betas clipped at 0.999 (lmdm_modules/utils.py make_beta_schedule)."""
    steps = torch.arange(n_timestep + 1, dtype=torch.float64, device="cpu") / n_timestep + s
    alphas = torch.cos(steps / (1 + s) * math.pi / 2) ** 2
    alphas = alphas / alphas[0]
    betas = (1 - alphas[1:] / alphas[:-1]).clamp(0, 0.999).to(torch.float32)
    return torch.cumprod(1.0 - betas, dim=0)


class LMDM(nn.Module):
    """One guided denoiser call as exported: (x, cond_frame, cond, time_cond int64) ->
    (pred_noise, x_start), x_start = u + 2 (c - u) over two MotionDecoder passes.

    Matches core/models/modules/LMDM.py (``forward`` = ``model_predictions``); the checkpoint
    (``model_state_dict``) is the inner :class:`MotionDecoder`'s, at ``.model``.
    """

    input_names = ("x", "cond_frame", "cond", "time_cond")
    output_names = ("pred_noise", "x_start")

    def __init__(self, motion_feat_dim: int = 265, audio_feat_dim: int = 1103, seq_frames: int = 80,
                 latent_dim: int = 512, ff_size: int = 1024, num_layers: int = 8, num_heads: int = 8,
                 guidance_weight: float = 2.0) -> None:
        super().__init__()
        self.motion_feat_dim, self.audio_feat_dim, self.seq_frames = motion_feat_dim, audio_feat_dim, seq_frames
        self.guidance_weight = guidance_weight
        self.model = MotionDecoder(motion_feat_dim, seq_frames, latent_dim, ff_size, num_layers, num_heads,
                                   0.1, audio_feat_dim)
        # schedule tables: not in the checkpoint (LMDM.init_diff recomputes them); on the CPU under
        # a meta-device build, so a loaded model has real values
        device = self.model.final_layer.weight.device
        ac = cosine_alphas_cumprod().to("cpu" if device.type == "meta" else device)
        self.register_buffer("alphas_cumprod", ac, persistent=False)
        self.register_buffer("sqrt_recipm1_alphas_cumprod", torch.sqrt(1.0 / ac - 1), persistent=False)
        self.register_buffer("sqrt_recip1m_alphas_cumprod", torch.sqrt(1.0 / (1.0 - ac)), persistent=False)

    def forward(self, x: Tensor, cond_frame: Tensor, cond: Tensor, time_cond: Tensor) -> tuple[Tensor, Tensor]:
        x_start = self.model.guided_forward(x, cond_frame, cond, time_cond, self.guidance_weight)
        a = self.sqrt_recip1m_alphas_cumprod.gather(-1, time_cond).view(-1, 1, 1).to(x.dtype)
        b = self.sqrt_recipm1_alphas_cumprod.gather(-1, time_cond).view(-1, 1, 1).to(x.dtype)
        return a * x - x_start / b, x_start

    def example_inputs(self, batch: int = 1) -> tuple[Tensor, ...]:
        return (torch.randn(batch, self.seq_frames, self.motion_feat_dim), torch.randn(batch, self.motion_feat_dim),
                torch.randn(batch, self.seq_frames, self.audio_feat_dim),
                torch.randint(0, 1000, (batch,), dtype=torch.int64))


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Network:
    """One published network: how to build it, its files, where its state dict sits in the .pth."""

    name: str
    build: Callable[..., nn.Module]
    pth: str  # ditto_pytorch/models/<pth>
    onnx: str  # ditto_onnx/<onnx>
    published_bytes: int  # the .pth size on HF (MB = 1e6 bytes), spec §1.1 / LP speed.md
    wrapper_key: str | None = None  # the dict key holding the state dict (None: the file is one)
    strip_module_prefix: bool = False  # DDP "module." prefixes removed, as the real loader does
    inner: str | None = None  # the submodule the state dict belongs to

    @property
    def input_names(self) -> tuple[str, ...]:
        return self.build.input_names  # type: ignore[attr-defined]

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.build.output_names  # type: ignore[attr-defined]


NETWORKS: dict[str, Network] = {n.name: n for n in (
    Network("appearance_extractor", AppearanceFeatureExtractor, "appearance_extractor.pth",
            "appearance_extractor.onnx", 3_390_000),
    Network("motion_extractor", MotionExtractor, "motion_extractor.pth", "motion_extractor.onnx", 113_000_000),
    # warp_network.pth's size is cut from the HF page; LP lists 45.53 M parameters (174 MiB)
    Network("warp_network", WarpingNetwork, "warp_network.pth", "warp_network_ori.onnx", 182_120_000),
    Network("decoder", SPADEDecoder, "decoder.pth", "decoder.onnx", 222_000_000),
    Network("stitch_network", StitchingNetwork, "stitch_network.pth", "stitch_network.onnx", 2_390_000,
            wrapper_key="retarget_shoulder", strip_module_prefix=True),
    Network("lmdm", LMDM, "lmdm_v0.4_hubert.pth", "lmdm_v0.4_hubert.onnx", 191_000_000,
            wrapper_key="model_state_dict", inner="model"),
)}
ALIASES = {"lmdm_v0.4_hubert": "lmdm", "warp_network_ori": "warp_network", "stitch": "stitch_network",
           "appearance": "appearance_extractor", "motion": "motion_extractor", "warp": "warp_network"}


class PublishedCheckpointError(RuntimeError):
    """A .pth that is not the published network: the message names the file and the keys."""


def network(name: str) -> Network:
    key = ALIASES.get(name, name)
    if key not in NETWORKS:
        raise KeyError(f"unknown Ditto network {name!r}; known: {', '.join(NETWORKS)}")
    return NETWORKS[key]


def build(name: str, meta: bool = False, **config: Any) -> nn.Module:
    """The full-size network (published hyper-parameters unless ``config`` overrides them), in
    eval mode; ``meta=True`` builds it on the meta device (shapes only, no memory)."""
    net = network(name)
    if meta:
        with torch.device("meta"):
            return net.build(**config).eval()
    return net.build(**config).eval()


def _target(net: Network, model: nn.Module) -> nn.Module:
    return getattr(model, net.inner) if net.inner else model


def state_bytes(model: nn.Module, name: str | None = None) -> int:
    """Bytes of the tensors in the network's checkpoint state dict (meta tensors count too)."""
    target = _target(network(name), model) if name else model
    return sum(t.numel() * t.element_size() for t in target.state_dict().values())


def _describe(keys: list[str], limit: int = 8) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_state(path: Path | str, name: str, state: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """Raise :class:`PublishedCheckpointError` naming every missing, unexpected or misshapen key."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k}: {tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} expected"
             for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_describe(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_describe(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} keys of the wrong shape: {_describe(wrong, 4)}")
    if problems:
        raise PublishedCheckpointError(
            f"{path}: not Ditto's {name} ({len(state)} keys in the file, {len(expected)} expected): "
            + "; ".join(problems))


def read_published(name: str, path: Path | str) -> dict[str, Tensor]:
    """The network's state dict from a published-layout .pth, unwrapped as Ditto's loaders do:
    ``checkpoint["model_state_dict"]`` (LMDM.load_model), ``checkpoint["retarget_shoulder"]`` with
    "module." removed (StitchingNetwork.load_model), the file itself for the others."""
    net = network(name)
    path = Path(path)
    if not path.is_file():
        raise PublishedCheckpointError(f"{path}: file not found (Ditto's ditto_pytorch/models/{net.pth})")
    try:
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PublishedCheckpointError(
            f"{path}: cannot be read as a PyTorch checkpoint ({path.stat().st_size:,} bytes; "
            f"{type(exc).__name__}: {str(exc)[:200]})") from exc
    state = checkpoint
    if net.wrapper_key is not None:
        if not isinstance(checkpoint, Mapping) or net.wrapper_key not in checkpoint:
            keys = list(checkpoint)[:6] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
            raise PublishedCheckpointError(
                f"{path}: expected a dict with {net.wrapper_key!r} (as Ditto's {net.name} loader reads); found {keys}")
        state = checkpoint[net.wrapper_key]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise PublishedCheckpointError(f"{path}: not a state dict of tensors")
    if net.strip_module_prefix:
        state = OrderedDict((k.replace("module.", ""), v) for k, v in state.items())
    return dict(state)


def load_published(name: str, path: Path | str, **config: Any) -> nn.Module:
    """Build the full-size network and load a published .pth into it (strict keys and shapes,
    checked first with a message naming each problem key). Returns the model in eval mode, fp32."""
    net = network(name)
    state = read_published(name, path)
    model = build(name, meta=True, **config)
    target = _target(net, model)
    expected = target.state_dict()
    for key in expected:
        # BatchNorm's own loader fills a missing counter (files saved before torch 0.4.1 lack it)
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = torch.tensor(0, dtype=torch.long)
    check_state(path, net.name, state, expected)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    target.load_state_dict(state, strict=True, assign=True)  # assign: meta tensors take the file's
    # shared modules (the rotary embedding) got one of the identical copies; anything still on meta
    # is a bug
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise PublishedCheckpointError(f"{path}: no values for {_describe(leftover)}")
    return model.eval()


def published_layout_checkpoint(name: str, path: Path | str, seed: int = 0, **config: Any) -> Path:
    """Write a random full-size checkpoint in the published layout: an OrderedDict state dict,
    wrapped as {"model_state_dict": ...} for the LMDM and as {"retarget_shoulder", "retarget_mouth",
    "retarget_eye"} with DDP "module." prefixes for the stitching file (LivePortrait's three MLPs)."""
    net = network(name)
    torch.manual_seed(seed)
    model = build(name, **config)
    state = OrderedDict((k, v.detach().clone()) for k, v in _target(net, model).state_dict().items())
    payload: Any = state
    if net.name == "stitch_network":
        payload = {}
        for key, (cin, hidden, cout) in STITCH_MLPS.items():
            mlp = model if key == "retarget_shoulder" else StitchingNetwork(cin, hidden, cout)
            payload[key] = OrderedDict((f"module.{k}", v.detach().clone()) for k, v in mlp.state_dict().items())
    elif net.wrapper_key is not None:
        payload = {net.wrapper_key: state}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, str(path))
    return path


# ----------------------------------------------------------------------------- ONNX


def _grid_sample_opset17(g, inp, grid, mode, padding_mode, align_corners):  # noqa: ANN001
    """ONNX GridSample (opset 16 spellings) for 5-D input too: torch's own symbolic refuses
    volumes before opset 20. Ditto's warp_network_ori.onnx is this form; ORT CPU runs it."""
    from torch.onnx import symbolic_helper as sh

    modes = {v: k for k, v in F.GRID_SAMPLE_INTERPOLATION_MODES.items()}
    pads = {v: k for k, v in F.GRID_SAMPLE_PADDING_MODES.items()}
    return g.op("GridSample", inp, grid, align_corners_i=int(sh._maybe_get_const(align_corners, "b")),
                mode_s=modes[sh._maybe_get_const(mode, "i")], padding_mode_s=pads[sh._maybe_get_const(padding_mode, "i")])


def export_onnx(name: str, out_path: Path | str, batch_dynamic: bool, *, model: nn.Module | None = None,
                opset: int = ONNX_OPSET, seed: int = 0) -> Path:
    """Export a random-weight full-size network (or ``model``, e.g. a small one of the same class)
    with the published input/output names and order (spec §2.1).

    ``batch_dynamic`` makes dim 0 of every input and output symbolic ("batch"); otherwise the
    graph is batch 1, as D feeds it. The warp network's two 5-D GridSamples are written as
    standard ONNX GridSample: at opset 17 with mode "bilinear" (a custom symbolic: the published
    warp_network_ori.onnx's form, which ORT accepts), or natively at opset >= 20 ("linear").
    """
    net = network(name)
    if model is None:
        torch.manual_seed(seed)
        model = build(name)
    model = model.eval()
    torch.manual_seed(seed)
    inputs = model.example_inputs(2 if batch_dynamic else 1)  # type: ignore[operator]
    names = [*net.input_names, *net.output_names]
    axes = {n: {0: "batch"} for n in names} if batch_dynamic else None
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    custom = opset < 20 and net.name == "warp_network"
    if custom:
        torch.onnx.register_custom_op_symbolic("aten::grid_sampler", _grid_sample_opset17, opset)
    traced: list[Any] = []
    hook = model.register_forward_hook(lambda _m, _i, out: traced.append(out))
    try:
        with torch.no_grad():
            torch.onnx.export(model, inputs, str(out_path), dynamo=False, opset_version=opset,
                              input_names=list(net.input_names), output_names=list(net.output_names),
                              dynamic_axes=axes, do_constant_folding=True)
    finally:
        hook.remove()
        if custom:
            torch.onnx.unregister_custom_op_symbolic("aten::grid_sampler", opset)
    outputs = traced[-1] if isinstance(traced[-1], tuple) else (traced[-1],)
    _declare_output_shapes(out_path, [tuple(o.shape) for o in outputs], batch_dynamic)
    return out_path


def _declare_output_shapes(path: Path, shapes: list[tuple[int, ...]], batch_dynamic: bool) -> None:
    """Write the traced output shapes into the graph where ONNX shape inference left a dim
    unnamed-symbolic (it cannot infer 5-D GridSample), so outputs read e.g. (batch,256,64,64)."""
    import onnx

    model = onnx.load(str(path))
    changed = False
    for output, shape in zip(model.graph.output, shapes):
        dims = output.type.tensor_type.shape.dim
        if len(dims) != len(shape):
            continue
        for i, (dim, size) in enumerate(zip(dims, shape)):
            if i == 0 and batch_dynamic:
                continue
            if not dim.HasField("dim_value") or dim.dim_value != size:
                dim.Clear()
                dim.dim_value = size
                changed = True
    if changed:
        onnx.save_model(model, str(path))
