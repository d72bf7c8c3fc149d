"""The contextual module: a pixel-wise latent code (mu/logvar) from dilated context, and the augmented feature.

Its output code z is what the generator is conditioned on, so fake features carry the pixel's context.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import shard


class Conv(nn.Module):
    """Bias-free conv with an optional ReLU; wrapped so state-dict names end in `.conv.weight` as released."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, dilation: int = 1, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=False)
        self.relu = relu

    def forward(self, x):
        x = self.conv(x)
        return F.relu(x) if self.relu else x


@dataclass
class ContextOutput:
    """All tensors (N, C, h, w): mu, logvar (>= 0), the latent code z and the augmented feature h0 in (0, 1)."""
    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor
    h0: torch.Tensor


class ContextualModule(nn.Module):
    """Cascaded dilated convs -> 3-way gate -> pooled context -> mu / logvar -> z -> h0 = sigmoid(h + h*sigmoid(z))."""

    def __init__(self, feat_channels: int = 600, width: int = 256, dilations: Sequence[int] = (1, 2, 5)):
        super().__init__()
        if len(dilations) != 3:
            raise ValueError(f"dilations must name three cascaded convs, got {list(dilations)}")
        self.contextual1 = Conv(feat_channels, width, 3, dilations[0])
        self.contextual2 = Conv(width, width, 3, dilations[1])
        self.contextual3 = Conv(width, width, 3, dilations[2])
        # Faithful to the original: the gate conv is in no optimizer group, so it keeps its initial values
        # forever; it never trains, so it computes no weight gradient here either.
        self.fc_1 = Conv(3 * width, 3, 3)
        self.fc_1.conv.weight.requires_grad_(False)
        self.contextualpool = Conv(3 * width, feat_channels, 1)
        self.contextuallocalmu = Conv(feat_channels, feat_channels, 3, relu=False)
        # Faithful to the original: the "sigma" head is a log-variance behind a ReLU, so logvar >= 0.
        self.contextuallocalsigma = Conv(feat_channels, feat_channels, 3, relu=True)

    def forward(self, h: torch.Tensor, noise_rows: Optional[shard.Rows] = None) -> ContextOutput:
        """h: ASPP output (N, F, h, w). Samples z in training mode, uses z = mu in eval mode.

        noise_rows: these N images' rows of the global batch, whose noise is drawn for all of it (models/shard.py).
        Under mixed precision the noise, z and h0 are float32: exp(logvar / 2) and the two sigmoids are cheap
        and bfloat16's 8-bit mantissa would quantise the latent code the generator is conditioned on.
        """
        c1 = self.contextual1(torch.sigmoid(h))
        c2 = self.contextual2(c1)
        c3 = self.contextual3(c2)
        # Faithful to the original: sigmoid(ReLU(.)) puts every gate in [0.5, 1).
        gates = torch.sigmoid(self.fc_1(torch.cat([c1, c2, c3], 1)))
        pooled = self.contextualpool(torch.cat([gates[:, 0:1] * c1, gates[:, 1:2] * c2, gates[:, 2:3] * c3], 1))
        mu = self.contextuallocalmu(pooled)
        logvar = self.contextuallocalsigma(pooled)
        mu, logvar = _at_least_float32(mu), _at_least_float32(logvar)
        if self.training:
            z = mu + shard.randn(mu.shape, noise_rows, device=mu.device) * torch.exp(0.5 * logvar)
        else:
            z = mu
        h0 = torch.sigmoid(h + h * torch.sigmoid(z))
        return ContextOutput(mu=mu, logvar=logvar, z=z, h0=h0)


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """bfloat16/float16 (mixed precision) -> float32; float32 and float64 unchanged."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) averaged over visible pixels x channels; 0 when nothing is visible.

    mu, logvar: (N, C, h, w); mask: bool (N, h, w) or (N, 1, h, w) at the same resolution, None = all visible.
    The 1-channel mask is broadcast instead of materialised over C channels (same value, no C-fold copy).
    """
    # float32 under mixed precision: exp(logvar) of a bfloat16/float16 logvar overflows or rounds coarsely.
    mu, logvar = _at_least_float32(mu), _at_least_float32(logvar)
    terms = 1 + logvar - mu.pow(2) - logvar.exp()
    if mask is None:
        return -0.5 * terms.mean()
    mask = mask.reshape(mu.shape[0], 1, *mu.shape[2:]).to(terms.dtype)
    count = mask.sum() * mu.shape[1]
    # With nothing visible the numerator is 0, so clamping the count yields the original's 0 without a sync.
    return -0.5 * (terms * mask).sum() / count.clamp(min=1)
