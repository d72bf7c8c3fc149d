"""Per-pixel 1x1 convolutions applied to pixel matrices.

The generator and the classifier are 1x1-conv stacks (weights (out, in, 1, 1), as released). Applying them
as matrix products on a (P, C) matrix of selected pixels lets training skip pixels whose loss is masked out.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def conv1x1(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, bias=True)


def apply_1x1(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """x: (P, C_in) -> (P, C_out) with the conv's weights."""
    return F.linear(x, conv.weight.flatten(1), conv.bias)


def to_pixels(maps: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N*h*w, C) in (n, i, j) raster order."""
    return maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])


def to_maps(pixels: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
    """(N*h*w, C) -> (N, C, h, w), inverse of to_pixels."""
    return pixels.reshape(n, h, w, -1).permute(0, 3, 1, 2)
