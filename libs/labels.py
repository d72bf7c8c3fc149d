"""Nearest-neighbour label resizing with OpenCV's INTER_NEAREST semantics, for numpy and torch alike.

The original resizes labels with OpenCV in the loader and with PyTorch's legacy `nearest` in training;
both pick source index min(floor(i * in / out), in - 1). One helper keeps the two paths identical.
"""
from functools import lru_cache

import numpy as np
import torch


@lru_cache(maxsize=256)
def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of every output position, computed in float64 exactly as OpenCV does."""
    if in_size <= 0 or out_size <= 0:
        raise ValueError(f"nearest_indices: sizes must be positive, got in={in_size}, out={out_size}")
    inverse_scale = 1.0 / (out_size / in_size)
    idx = np.floor(np.arange(out_size, dtype=np.float64) * inverse_scale).astype(np.int64)
    idx = np.minimum(idx, in_size - 1)
    idx.setflags(write=False)
    return idx


def nearest_resize(labels, size):
    """Resize a label map (..., H, W) to size (h, w) by nearest neighbour; numpy array or torch tensor."""
    out_h, out_w = int(size[0]), int(size[1])
    in_h, in_w = labels.shape[-2], labels.shape[-1]
    if (in_h, in_w) == (out_h, out_w):
        return labels
    rows = nearest_indices(in_h, out_h)
    cols = nearest_indices(in_w, out_w)
    if isinstance(labels, torch.Tensor):
        rows_t = torch.tensor(rows, device=labels.device)
        cols_t = torch.tensor(cols, device=labels.device)
        return labels.index_select(-2, rows_t).index_select(-1, cols_t)
    return labels[..., rows[:, None], cols[None, :]]
