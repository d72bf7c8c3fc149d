"""DeepLabv2-ResNet (Caffe layout, output stride 8, frozen BatchNorm) with a summed 4-branch ASPP.

Module names (`layer1.conv1`, `layer2.block1.reduce`, ..., `aspp.stages.c0`) follow the original release so
released weights map onto this network through one prefix table (libs/checkpoint.py).
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.contextual import ContextOutput, ContextualModule


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that always runs on its stored statistics and whose affine parameters never train.

    Faithful to the original: every BatchNorm of the backbone is in eval mode and in no optimizer group.
    Keeping it an nn.BatchNorm2d keeps the state-dict entries (running stats, num_batches_tracked).
    """

    def __init__(self, num_features: int):
        # Faithful to the original: eps 1e-5, momentum 0.999 (irrelevant while frozen).
        super().__init__(num_features, eps=1e-5, momentum=0.999, affine=True)
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)
        self.training = False   # frozen from construction on, not only after the first .train() call

    def train(self, mode: bool = True):
        return super().train(False)

    @classmethod
    @contextlib.contextmanager
    def calibrating(cls, module: nn.Module) -> Iterator[int]:
        """Re-estimate the frozen statistics of every FrozenBatchNorm2d in `module` from the batches run through it
        inside the context (a cumulative average); on exit each one is frozen again with the momentum it had.

        Not in the original, which always starts from pretrained statistics: a randomly initialised backbone with
        default statistics saturates the sigmoid features (the demo needs this, config back.bn_calibration_batches).
        Yields the number of BatchNorm layers being calibrated.
        """
        layers = [m for m in module.modules() if isinstance(m, cls)]
        saved = [(bn.momentum, bn.training) for bn in layers]
        for bn in layers:
            bn.reset_running_stats()
            bn.momentum = None          # cumulative average over the calibration batches
            bn.training = True          # only here may the statistics change; train() cannot switch it on
        try:
            yield len(layers)
        finally:
            for bn, (momentum, training) in zip(layers, saved):
                bn.momentum, bn.training = momentum, training


class ConvBN(nn.Module):
    """Bias-free conv followed by frozen BN (and optionally ReLU): the unit every ResNet layer is built of."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding, dilation, bias=False)
        self.bn = FrozenBatchNorm2d(out_ch)
        self.relu = relu

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.relu(x) if self.relu else x


class Bottleneck(nn.Module):
    """reduce 1x1 (stride) -> conv3x3 (dilated) -> increase 1x1, plus identity or `proj` shortcut."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, stride: int, dilation: int, projection: bool):
        super().__init__()
        self.reduce = ConvBN(in_ch, mid_ch, 1, stride)
        self.conv3x3 = ConvBN(mid_ch, mid_ch, 3, 1, dilation, dilation)
        self.increase = ConvBN(mid_ch, out_ch, 1, relu=False)
        self.proj = ConvBN(in_ch, out_ch, 1, stride, relu=False) if projection else None

    def forward(self, x):
        shortcut = self.proj(x) if self.proj is not None else x
        return F.relu(self.increase(self.conv3x3(self.reduce(x))) + shortcut)


class ResLayer(nn.Sequential):
    """A stage of bottlenecks named block1..blockN; the first one carries the stride and the projection."""

    def __init__(self, n_blocks: int, in_ch: int, mid_ch: int, out_ch: int, stride: int, dilation: int):
        super().__init__()
        for i in range(n_blocks):
            self.add_module(f"block{i + 1}", Bottleneck(
                in_ch if i == 0 else out_ch, mid_ch, out_ch,
                stride if i == 0 else 1, dilation, projection=(i == 0)))


class Stem(nn.Module):
    """7x7/2 conv + BN + ReLU, then 3x3/2 max-pool with ceil_mode (Caffe's rounding)."""

    def __init__(self, out_ch: int):
        super().__init__()
        self.conv1 = ConvBN(3, out_ch, 7, 2, 3)
        self.pool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)

    def forward(self, x):
        return self.pool(self.conv1(x))


class ASPP(nn.Module):
    """Parallel dilated 3x3 convs whose outputs are summed (DeepLabv2): no BN, no ReLU, no image pooling."""

    def __init__(self, in_ch: int, out_ch: int, rates: Sequence[int]):
        super().__init__()
        self.stages = nn.Module()
        for i, rate in enumerate(rates):
            conv = nn.Conv2d(in_ch, out_ch, 3, padding=rate, dilation=rate, bias=True)
            nn.init.normal_(conv.weight, 0, 0.01)
            nn.init.zeros_(conv.bias)
            self.stages.add_module(f"c{i}", conv)

    def forward(self, x):
        convs = list(self.stages.children())
        out = convs[0](x)
        for conv in convs[1:]:
            out = out + conv(x)
        return out


class DeepLabV2(nn.Module):
    """DeepLabv2 ResNet: x (N,3,H,W) -> h (N,out_channels,h,w), output stride 8.

    n_blocks=(3,4,23,3) and base_width=64 give ResNet-101; tests and the demo pass smaller values.
    """

    def __init__(self, out_channels: int = 600, n_blocks: Sequence[int] = (3, 4, 23, 3),
                 atrous_rates: Sequence[int] = (6, 12, 18, 24), base_width: int = 64):
        super().__init__()
        if len(n_blocks) != 4 or min(n_blocks) < 1:
            raise ValueError(f"n_blocks must be 4 positive block counts, got {list(n_blocks)}")
        mids = [base_width * 2 ** i for i in range(4)]
        outs = [4 * m for m in mids]
        self.layer1 = Stem(base_width)
        self.layer2 = ResLayer(n_blocks[0], base_width, mids[0], outs[0], stride=1, dilation=1)
        self.layer3 = ResLayer(n_blocks[1], outs[0], mids[1], outs[1], stride=2, dilation=1)
        self.layer4 = ResLayer(n_blocks[2], outs[1], mids[2], outs[2], stride=1, dilation=2)
        self.layer5 = ResLayer(n_blocks[3], outs[2], mids[3], outs[3], stride=1, dilation=4)
        self.aspp = ASPP(outs[3], out_channels, atrous_rates)

    def forward(self, x):
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4, self.layer5, self.aspp):
            x = layer(x)
        return x


def feature_size(size: int) -> int:
    """Side of the output map for an input side, by the network's conv/pool arithmetic (output stride 8).

    Lets step 2 know the feature-map size without running the backbone.
    """
    if size < 1:
        raise ValueError(f"feature_size: input size must be positive, got {size}")
    size = (size - 1) // 2 + 1                      # 7x7 conv, stride 2, pad 3
    pooled = math.ceil((size - 1) / 2) + 1          # 3x3 max-pool, stride 2, pad 1, ceil_mode
    if (pooled - 1) * 2 >= size + 1:                # PyTorch drops a window that starts in the padding
        pooled -= 1
    return (pooled - 1) // 2 + 1                    # stride-2 1x1 conv of layer3


class ContextualDeepLab(nn.Module):
    """One scale of the original's `back.scale`: DeepLabV2 features h, then the contextual module on h."""

    def __init__(self, backbone: DeepLabV2, context: ContextualModule):
        super().__init__()
        self.backbone = backbone
        self.context = context

    def forward(self, x: torch.Tensor, noise_rows=None) -> ContextOutput:
        """noise_rows: these images' rows of the global batch (models/shard.py), for the latent code's noise."""
        return self.context(self.backbone(x), noise_rows)


class MultiScale(nn.Module):
    """The original's MSC wrapper: the base network `scale` on the input at full scale, and at each pyramid scale
    (0.5, 0.75) for the maps that get fused by a pixel-wise max.

    Generic over the base network: `forward` is the full scale only, `pyramid` runs the extra scales and fuses the
    map that `select` picks from each output (CaGNet: the augmented feature h0; SPNet: projected class scores).
    Only the step-1 real-feature classification uses the pyramid; the original also computed it in eval mode and
    threw it away, so here it is computed only when asked for.
    """

    def __init__(self, scale: nn.Module, pyramid_scales: Sequence[float] = (0.5, 0.75)):
        super().__init__()
        self.scale = scale
        self.pyramid_scales = tuple(pyramid_scales)

    def forward(self, x: torch.Tensor, **kwargs):
        """The full scale; keyword arguments go to the base network (e.g. CaGNet's noise_rows)."""
        return self.scale(x, **kwargs)

    def scaled_size(self, height: int, width: int, p: float):
        """Input size of pyramid scale p: floor(H p) x floor(W p), as the original."""
        return int(height * p), int(width * p)

    def pyramid(self, x: torch.Tensor, full: torch.Tensor, select: Callable = lambda out: out,
                **kwargs) -> List[torch.Tensor]:
        """[full, map_0.5, map_0.75, max] where map_p = select(scale(x resized by p)) and max is the pixel-wise max
        of full and the bilinearly upsampled pyramid maps. x (N, 3, H, W); full: the full-scale map (N, C, h, w).
        Keyword arguments go to the base network at every scale."""
        size = full.shape[-2:]
        h, w = x.shape[-2:]
        scaled = [select(self.scale(F.interpolate(x, size=self.scaled_size(h, w, p), mode="bilinear",
                                                  align_corners=False), **kwargs)) for p in self.pyramid_scales]
        fused = full
        for s in scaled:
            fused = torch.max(fused, F.interpolate(s, size=size, mode="bilinear", align_corners=False))
        return [full, *scaled, fused]
