"""Nearest-neighbour label resizing with OpenCV's INTER_NEAREST semantics, for numpy and torch alike.

The original resizes labels with OpenCV in the loader and with PyTorch's legacy `nearest` in training;
both pick source index min(floor(i * inverse_scale), in - 1). For an explicit output size the scale is
out / in; for OpenCV's scale-factor form `cv2.resize(label, None, fx=f, fy=f)` (the loader's random rescale)
the output side is round(in * f) but the sampling scale stays f, which picks other source pixels whenever
round(in * f) / in != f. One helper covers both so every path stays identical to OpenCV.
"""
from functools import lru_cache
from typing import Optional

import numpy as np
import torch


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
