"""BiSeNet face parsing (zllrunning/face-parsing.PyTorch, as MuseTalk ships it), for export only.

The network behind ``face-parse-bisent/79999_iter.pth``: a ResNet-18 context path
(``cp.resnet``, attention refinement ``cp.arm16``/``cp.arm32``, ``cp.conv_head32``/``16``,
``cp.conv_avg``), a feature fusion module (``ffm``) fed by the ResNet's 1/8 features in place of
a spatial path, and three heads (``conv_out``, and ``conv_out16``/``conv_out32``, which only
served as auxiliary losses in training). The module names, and so the state-dict keys and
shapes, are the checkpoint's; ``forward`` computes the main head only, upsampled to the input
size, since that is the only output used at inference (``output[0]`` in MuseTalk).

Input: RGB, 512x512, scaled to [0, 1] then normalised with the ImageNet mean and std
(:func:`engines.musetalk.parsing.parse_input`). Output: logits for the 19 classes (0 background,
1 skin, ..., 11 mouth, 12 upper lip, 13 lower lip, ...). Serving runs the ONNX export
(:class:`FaceParseLabels`) and never imports this module (nor PyTorch).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from engines.musetalk.parsing import CLASSES

# 79999_iter.pth's state dict, as the reference model builds it (checked once against MuseTalk's
# copy of the original code): 191 keys, of which 31 are BatchNorm num_batches_tracked counters
STATE_KEYS = 191
BATCHNORM_COUNTERS = 31
PARAMETERS = 13_300_416  # learnable (conv and BatchNorm weights), the training-only heads included
STATE_VALUES = 13_313_119  # every number in the state dict (parameters + BatchNorm statistics)


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


class ResNet18(nn.Module):
    """torchvision's ResNet-18 trunk without the classifier; returns the 1/8, 1/16, 1/32 features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
        for i, (cin, cout, stride) in enumerate(widths, start=1):
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.layer1(self.maxpool(F.relu(self.bn1(self.conv1(x)))))
        feat8 = self.layer2(x)
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


def _global_mean(x: torch.Tensor) -> torch.Tensor:
    # the original's avg_pool2d over the whole map; a mean exports as one ReduceMean at any size
    return x.mean(dim=(2, 3), keepdim=True)


class AttentionRefinement(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(_global_mean(feat))))


class ContextPath(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, kernel=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ResNet's 1/8 features and the refined context at 1/8 (all the main head uses)."""
        feat8, feat16, feat32 = self.resnet(x)
        context = self.arm32(feat32) + self.conv_avg(_global_mean(feat32))  # 1x1 broadcast = its nearest upsampling
        up32 = self.conv_head32(F.interpolate(context, size=feat16.shape[2:], mode="nearest"))
        up16 = F.interpolate(self.arm16(feat16) + up32, size=feat8.shape[2:], mode="nearest")
        return feat8, self.conv_head16(up16)


class FeatureFusion(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, kernel=1)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        attention = torch.sigmoid(self.conv2(F.relu(self.conv1(_global_mean(feat)))))
        return feat * attention + feat


class Head(nn.Module):
    def __init__(self, cin: int, mid: int, classes: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, mid)
        self.conv_out = nn.Conv2d(mid, classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = Head(256, 256, classes)
        self.conv_out16 = Head(128, 64, classes)  # training-only heads: in the checkpoint, never run
        self.conv_out32 = Head(128, 64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, 19, H, W) of the main head, bilinearly upsampled to the input size."""
        feat8, context8 = self.cp(x)
        logits = self.conv_out(self.ffm(feat8, context8))
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=True)


class FaceParseLabels(nn.Module):
    """What is exported: normalised RGB (B, 3, 512, 512) -> class label per pixel (B, 512, 512) uint8.

    The argmax is in the graph so 1 byte per pixel leaves the model instead of 19 floats.
    """

    def __init__(self, net: BiSeNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image).argmax(dim=1).to(torch.uint8)
