"""Feature generator: [class word embedding ; contextual latent code] -> fake pixel feature in (0, 1)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import shard
from models.ops import apply_1x1, conv1x1


class GeneratorBlock(nn.Module):
    """1x1 conv -> LeakyReLU(0.2) -> element-wise dropout."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float):
        super().__init__()
        self.conv = conv1x1(in_ch, out_ch)
        self.dropout = dropout

    def forward(self, x, rows: Optional[shard.Rows] = None):
        return shard.dropout(F.leaky_relu(apply_1x1(self.conv, x), 0.2), self.dropout, self.training, rows)


class FeatureGenerator(nn.Module):
    """Pixel-wise MLP 1200 -> 1024 -> 960 -> 864 -> 784 -> 720 -> 600 with a sigmoid output.

    Input and output are pixel matrices (P, C): every pixel is generated independently.
    """

    def __init__(self, in_dim: int = 1200, out_dim: int = 600,
                 hidden_dims: Sequence[int] = (1024, 960, 864, 784, 720),
                 dropouts: Sequence[float] = (0.1, 0.1, 0.3, 0.5, 0.5)):
        super().__init__()
        if len(hidden_dims) != len(dropouts):
            raise ValueError(f"gen.hidden_dims_mlp ({len(hidden_dims)} layers) and gen.dropout_mlp "
                             f"({len(dropouts)} values) must have the same length")
        dims = [in_dim, *hidden_dims]
        self.mlp = nn.ModuleList(GeneratorBlock(a, b, p) for a, b, p in zip(dims[:-1], dims[1:], dropouts))
        # Faithful to the original: the last layer is a bare conv, hence `mlp.5.weight` (no `.conv.`).
        self.mlp.append(conv1x1(dims[-1], out_dim))
        self.in_dim = in_dim

    def forward(self, condition: torch.Tensor, code: torch.Tensor, rows: Optional[shard.Rows] = None) -> torch.Tensor:
        """condition (P, E), code (P, F) -> fake features (P, out_dim). rows: these P pixels' rows of the global
        pixel matrix, whose dropout masks are drawn for all of it (models/shard.py)."""
        x = torch.cat([condition, code], 1)
        if x.shape[1] != self.in_dim:
            raise ValueError(f"generator input has {x.shape[1]} channels (embedding {condition.shape[1]} + "
                             f"code {code.shape[1]}), gen.in_dim_mlp is {self.in_dim}")
        for block in self.mlp[:-1]:
            x = block(x, rows)
        return torch.sigmoid(apply_1x1(self.mlp[-1], x))
