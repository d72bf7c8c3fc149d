"""The "discriminator": a shared fc trunk with a real/fake head and a class head, applied pixel-wise."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import shard
from models.ops import apply_1x1, conv1x1, to_maps, to_pixels


class Trunk(nn.Module):
    """1x1 conv -> ReLU -> dropout (config: norm_fc none, activ_fc relu, drop_fc)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float):
        super().__init__()
        self.conv = conv1x1(in_dim, out_dim)
        self.dropout = dropout

    def forward(self, x, rows: Optional[shard.Rows] = None):
        return shard.dropout(F.relu(apply_1x1(self.conv, x)), self.dropout, self.training, rows)


class Classifier(nn.Module):
    """fc 600 -> 1024 (+ReLU, dropout 0.5); `pred` 1024 -> 1 (sigmoid score); `cls` 1024 -> C logits.

    Faithful to the original: every call recomputes the trunk and so draws its own dropout mask.
    Inputs are pixel matrices (P, F); `logit_maps` handles (N, F, h, w) maps for prediction. `rows`: the P
    pixels' rows of the global pixel matrix when several processes share a batch (models/shard.py).
    """

    def __init__(self, in_dim: int = 600, hidden_dim: int = 1024, num_outputs: int = 21, dropout: float = 0.5):
        super().__init__()
        self.fc = Trunk(in_dim, hidden_dim, dropout)
        self.pred = conv1x1(hidden_dim, 1)
        self.cls = conv1x1(hidden_dim, num_outputs)

    def score(self, x: torch.Tensor, rows: Optional[shard.Rows] = None) -> torch.Tensor:
        """Real/fake score in (0, 1): (P, F) -> (P, 1)."""
        return torch.sigmoid(apply_1x1(self.pred, self.fc(x, rows)))

    def logits(self, x: torch.Tensor, rows: Optional[shard.Rows] = None) -> torch.Tensor:
        """Class logits: (P, F) -> (P, C)."""
        return apply_1x1(self.cls, self.fc(x, rows))

    def logit_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """(N, F, h, w) -> (N, C, h, w)."""
        n, _, h, w = maps.shape
        return to_maps(self.logits(to_pixels(maps)), n, h, w)
