"""SPNet (Xian et al., CVPR 2019): DeepLabv2 pixel embeddings projected onto fixed class embeddings.

baselines-spec §1.1/§1.4: the DeepLabv2-ResNet101 of CaGNet's `back.scale` without the contextual module; the summed
ASPP outputs the visual embedding h (E = embedding dim, 600, linear); the score of class c at a pixel is h . e_c with
the fixed, L2-normalised class embedding e_c (no bias, no scale, h not normalised). Multi-scale (MSC): the projection
is applied at every scale and the fused map is the pixel-wise max over the PROJECTED SCORES (CaGNet fuses features).

State-dict layout: Em_vis, Em_all (CaGNet's tables, same names and shapes, buffers) and `back.scale.backbone.*`, which
libs/checkpoint.py saves as CaGNet's original `back.scale.layer*` / `back.scale.aspp.*`: an SPNet checkpoint can
initialise CaGNet's backbone (the role of the original's `spnet_cocostuff_init.pth`).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.backbone import DeepLabV2, MultiScale, feature_size
from models.cagnet import EmbeddingTable


def project(h: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """Class scores (N, K, h, w) = h (N, E, h, w) . embeddings (K, E) at every pixel (a 1x1 conv without bias)."""
    return F.conv2d(h, embeddings.to(h.dtype)[:, :, None, None])


class ProjectedDeepLab(nn.Module):
    """One scale: DeepLabV2 embedding h, projected onto `embeddings` when given (else h itself)."""

    def __init__(self, backbone: DeepLabV2):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor, embeddings: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.backbone(x)
        return h if embeddings is None else project(h, embeddings)


class SPNet(nn.Module):
    """seen_embeddings (256, E): rows by train id (zero beyond S); all_embeddings (S+U, E): rows by test id.
    Both are L2-normalised by the builder; only rows 0..S-1 of the first table score in training."""

    def __init__(self, back: MultiScale, seen_embeddings: torch.Tensor, all_embeddings: torch.Tensor,
                 num_seen: int, ignore_index: int = 255):
        super().__init__()
        self.Em_vis = EmbeddingTable(seen_embeddings)
        self.Em_all = EmbeddingTable(all_embeddings)
        self.back = back
        self.num_seen = int(num_seen)
        self.num_classes = all_embeddings.shape[0]
        self.ignore_index = ignore_index

    # ---- anatomy the engine relies on ---------------------------------------------------------------
    @property
    def deeplab(self) -> DeepLabV2:
        return self.back.scale.backbone

    @staticmethod
    def feature_shape(height: int, width: int):
        return feature_size(height), feature_size(width)

    def param_groups(self) -> Dict[str, List[nn.Parameter]]:
        """Trained parameters by optimizer group (baselines-spec §1.2): `resnet` conv weights, `aspp_weight`,
        `aspp_bias`. BatchNorm affine parameters and the embedding tables are in no group (frozen)."""
        aspp = list(self.deeplab.aspp.stages.children())
        return {
            "resnet": [m.weight for name, m in self.deeplab.named_modules()
                       if isinstance(m, nn.Conv2d) and name.startswith("layer")],
            "aspp_weight": [conv.weight for conv in aspp],
            "aspp_bias": [conv.bias for conv in aspp],
        }

    def seen_table(self) -> torch.Tensor:
        return self.Em_vis.weight[:self.num_seen]

    # ---- forwards -----------------------------------------------------------------------------------
    def multi_scale_scores(self, images: torch.Tensor, embeddings: torch.Tensor) -> List[torch.Tensor]:
        """[full, 0.5, 0.75, max] score maps (N, K, h_k, w_k); max = pixel-wise max of the full map and the
        bilinearly upsampled pyramid maps (the MSC output in train mode, baselines-spec §1.1)."""
        full = self.back(images, embeddings=embeddings)
        return self.back.pyramid(images, full, embeddings=embeddings)

    def train_scores(self, images: torch.Tensor) -> List[torch.Tensor]:
        """The four training outputs over the S seen classes."""
        return self.multi_scale_scores(images, self.seen_table())

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Scores over all S+U classes at feature resolution: the MSC max (SPNet's eval-mode output)."""
        return self.multi_scale_scores(images, self.Em_all.weight)[-1]

    def calibration_forward(self, images: torch.Tensor) -> None:
        """The forward whose BatchNorm inputs define the frozen statistics (FrozenBatchNorm2d.calibrating)."""
        self.deeplab(images)


def build_spnet(seen_embeddings: torch.Tensor, all_embeddings: torch.Tensor, num_seen: int, *,
                n_blocks: Sequence[int] = (3, 4, 23, 3), base_width: int = 64,
                atrous_rates: Sequence[int] = (6, 12, 18, 24), pyramid_scales: Sequence[float] = (0.5, 0.75),
                ignore_index: int = 255) -> SPNet:
    """The model from explicit sizes (defaults: the paper's). The ASPP outputs E = the embedding dim channels; the
    class embeddings are L2-normalised here (SPNet train.py:234-241; a no-op for already normalised rows)."""
    dim = all_embeddings.shape[1]
    if seen_embeddings.shape[1] != dim:
        raise ValueError(f"build_spnet: seen embeddings are {seen_embeddings.shape[1]}-d, all embeddings {dim}-d")
    seen = seen_embeddings.clone().float()
    seen[:num_seen] = F.normalize(seen[:num_seen], dim=1)
    back = MultiScale(ProjectedDeepLab(DeepLabV2(dim, n_blocks, atrous_rates, base_width)), pyramid_scales)
    return SPNet(back, seen, F.normalize(all_embeddings.float(), dim=1), num_seen, ignore_index)
