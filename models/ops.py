"""Tensor-layout helpers shared by the models, the losses and the data code.

* Pixel matrices: the generator and the classifier are 1x1-conv stacks (weights (out, in, 1, 1), as released).
  Applied as matrix products to a (P, C) matrix of selected pixels, training can skip the pixels whose loss is
  masked out; `to_pixels` / `to_maps` convert between (N, C, h, w) maps and (N*h*w, C) matrices in (n, i, j)
  raster order, the order the MMD runs are defined in (docs/method.md §3.5).
* Label resizing: the original resizes labels with OpenCV in the loader and with PyTorch's legacy `nearest` in
  training; both pick source index min(floor(i * inverse_scale), in - 1). For an explicit output size the scale
  is out / in; for OpenCV's scale-factor form `cv2.resize(label, None, fx=f, fy=f)` (the loader's random
  rescale) the output side is round(in * f) but the sampling scale stays f. One helper covers both, for numpy
  arrays and torch tensors alike, so every path stays identical to OpenCV.
"""
from functools import lru_cache
from typing import Optional

import numpy as np
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


def scaled_size(in_size: int, factor: float) -> int:
    """OpenCV's output side for `fx=factor` with no explicit size: in * factor rounded half to even (cvRound)."""
    return int(round(in_size * float(factor)))


@lru_cache(maxsize=256)
def nearest_indices(in_size: int, out_size: int, factor: Optional[float] = None) -> np.ndarray:
    """Source index of every output position, computed in float64 exactly as OpenCV does.

    `factor` is the scale OpenCV samples with when it was given fx/fy instead of a size; without it the scale
    is out_size / in_size.
    """
    if in_size <= 0 or out_size <= 0:
        raise ValueError(f"nearest_indices: sizes must be positive, got in={in_size}, out={out_size}")
    scale = out_size / in_size if factor is None else float(factor)
    if not scale > 0:
        raise ValueError(f"nearest_indices: the scale factor must be positive, got {factor!r}")
    inverse_scale = 1.0 / scale
    idx = np.floor(np.arange(out_size, dtype=np.float64) * inverse_scale).astype(np.int64)
    idx = np.minimum(idx, in_size - 1)
    idx.setflags(write=False)
    return idx


def nearest_resize(labels, size=None, *, factor: Optional[float] = None):
    """Resize a label map (..., H, W) by nearest neighbour; numpy array or torch tensor.

    Give either `size` (h, w), as `cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)`, or `factor`,
    as `cv2.resize(labels, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)`.
    """
    if (size is None) == (factor is None):
        raise ValueError(f"nearest_resize: give exactly one of size and factor, got size={size!r}, "
                         f"factor={factor!r}")
    in_h, in_w = labels.shape[-2], labels.shape[-1]
    if factor is None:
        out_h, out_w = int(size[0]), int(size[1])
    else:
        out_h, out_w = scaled_size(in_h, factor), scaled_size(in_w, factor)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"nearest_resize: a {in_h}x{in_w} label map scaled by {factor} would have "
                             f"{out_h}x{out_w} pixels; OpenCV refuses an empty output")
    # OpenCV copies the input when the output has its size, whatever the factor (no resampling at all).
    if (in_h, in_w) == (out_h, out_w):
        return labels
    rows = nearest_indices(in_h, out_h, factor)
    cols = nearest_indices(in_w, out_w, factor)
    if isinstance(labels, torch.Tensor):
        rows_t = torch.tensor(rows, device=labels.device)
        cols_t = torch.tensor(cols, device=labels.device)
        return labels.index_select(-2, rows_t).index_select(-1, cols_t)
    return labels[..., rows[:, None], cols[None, :]]
