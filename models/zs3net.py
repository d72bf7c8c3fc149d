"""ZS3Net (Bucher et al., NeurIPS 2019) on CaGNet's backbone: segmentation network, GMMN generator, classifier.

As the CaGNet tables need it (baselines-spec §2.4, docs/baselines.md): the DeepLabv2 backbone of CaGNet's
`back.scale` without the contextual module, feature x = sigmoid(ASPP output h) (600-d, in (0, 1) like CaGNet's h0),
a 1x1-conv classifier x -> S + U logits with bias (ZS3's `pred_conv`), and a generative moment-matching network
[class embedding ; noise] -> fake feature. Key names `back.scale.backbone.*` are CaGNet's, so the checkpoint layout
(libs/checkpoint.py) and a CaGNet or SPNet backbone carry over. State-dict children: Em_vis, Em_all, gen, cls, back.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.backbone import DeepLabV2, MultiScale, feature_size
from models.cagnet import EmbeddingTable
from models.ops import apply_1x1, conv1x1, nearest_resize, to_maps, to_pixels

NOISE_LAWS = ("uniform", "gaussian")


class SigmoidDeepLab(nn.Module):
    """One scale of `back.scale`: DeepLabV2 features h (N, F, h, w), returned as x = sigmoid(h)."""

    def __init__(self, backbone: DeepLabV2):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 sigmoid under autocast, as CaGNet's h0 (docs/method.md §8.7)
        h = self.backbone(x)
        return torch.sigmoid(h.to(torch.promote_types(h.dtype, torch.float32)))


class GMMN(nn.Module):
    """ZS3's generator (modeling/gmmn.py): Linear(E + Z -> hidden) -> LeakyReLU(0.2) -> Dropout -> Linear(hidden ->
    F), no output activation. Pixel matrices in and out: embeddings (P, E), noise (P, Z) -> (P, F)."""

    def __init__(self, embed_dim: int, noise_dim: int, hidden_dim: int, out_dim: int, dropout: float = 0.5):
        super().__init__()
        self.fc1 = nn.Linear(embed_dim + noise_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.dropout = dropout
        self.noise_dim = noise_dim
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """ZS3's init: Xavier-uniform weights, biases 0.01."""
        for layer in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.constant_(layer.bias, 0.01)

    def forward(self, embeddings: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        x = torch.cat([embeddings, noise.to(embeddings.dtype)], 1)
        x = F.dropout(F.leaky_relu(self.fc1(x), 0.2), self.dropout, self.training)
        return self.fc2(x)


class ZS3Net(nn.Module):
    """seen_embeddings (256, E): rows by train id, zero beyond S; all_embeddings (S+U, E): rows by test id."""

    def __init__(self, back: MultiScale, gen: GMMN, num_seen: int, seen_embeddings: torch.Tensor,
                 all_embeddings: torch.Tensor, feat_dim: int, noise: str = "uniform", ignore_index: int = 255):
        super().__init__()
        if noise not in NOISE_LAWS:
            raise ValueError(f"zs3_noise must be one of {', '.join(NOISE_LAWS)}, got {noise!r}")
        self.Em_vis = EmbeddingTable(seen_embeddings)
        self.Em_all = EmbeddingTable(all_embeddings)
        self.gen = gen
        # ZS3's pred_conv: one 1x1 conv over the S + U classes, with bias (no dead channel)
        self.cls = conv1x1(feat_dim, all_embeddings.shape[0])
        self.back = back
        self.num_seen = int(num_seen)
        self.num_classes = all_embeddings.shape[0]
        self.noise_law = noise
        self.ignore_index = ignore_index

    # ---- anatomy ------------------------------------------------------------------------------------------
    @property
    def deeplab(self) -> DeepLabV2:
        return self.back.scale.backbone

    def param_groups(self) -> Dict[str, List[nn.Parameter]]:
        """CaGNet's backbone groups (docs/method.md §4.2) with an empty `contextual` group (no contextual module),
        so CaGNet's backbone optimizer and its 1x/5x/10x/20x multipliers apply unchanged; `dis` = the classifier,
        `gen` = the GMMN. BatchNorm affine parameters and the embedding tables never train."""
        aspp = list(self.deeplab.aspp.stages.children())
        return {
            "resnet": [m.weight for name, m in self.deeplab.named_modules()
                       if isinstance(m, nn.Conv2d) and name.startswith("layer")],
            "contextual": [],
            "aspp_weight": [conv.weight for conv in aspp],
            "aspp_bias": [conv.bias for conv in aspp],
            "dis": list(self.cls.parameters()),
            "gen": list(self.gen.parameters()),
        }

    # ---- shapes -------------------------------------------------------------------------------------------
    @staticmethod
    def feature_shape(height: int, width: int):
        return feature_size(height), feature_size(width)

    def pyramid_labels(self, labels: torch.Tensor, image_size) -> List[torch.Tensor]:
        """labels (N, H', W') resized (nearest) to every pyramid map [full, 0.5, 0.75, max] of an input size."""
        full = self.feature_shape(*image_size)
        scaled = [self.feature_shape(*self.back.scaled_size(*image_size, p)) for p in self.back.pyramid_scales]
        return [nearest_resize(labels, size) for size in (full, *scaled, full)]

    # ---- forwards -----------------------------------------------------------------------------------------
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """x = sigmoid(h) at full scale: (N, 3, H, W) -> (N, F, h, w)."""
        return self.back(images)

    def pyramid(self, images: torch.Tensor, full: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """Feature maps [x, x_0.5, x_0.75, max] (the MSC pyramid over features, as CaGNet's)."""
        full = self.features(images) if full is None else full
        return self.back.pyramid(images, full)

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Classifier on a pixel matrix: (P, F) -> (P, S+U)."""
        return apply_1x1(self.cls, pixels)

    def logit_maps(self, maps: torch.Tensor) -> torch.Tensor:
        n, _, h, w = maps.shape
        return to_maps(self.logits(to_pixels(maps)), n, h, w)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (N, S+U, h, w) of the full-scale feature (the evaluation contract; caller sets eval)."""
        return self.logit_maps(self.features(images))

    def noise(self, count: int, device, dtype=torch.float32) -> torch.Tensor:
        """(count, Z) noise codes: U[0, 1) as ZS3's code (torch.rand) or N(0, 1) as its paper."""
        shape = (count, self.gen.noise_dim)
        draw = torch.rand if self.noise_law == "uniform" else torch.randn
        return draw(shape, device=device, dtype=dtype)

    def generate(self, test_ids: torch.Tensor) -> torch.Tensor:
        """Fake features (P, F) for test ids (P,), one fresh noise code per row."""
        emb = self.Em_all(test_ids)
        return self.gen(emb, self.noise(test_ids.shape[0], emb.device))

    def reset_classifier(self) -> None:
        """ZS3's random_last_layer: classifier weight and bias drawn from U[0, 1) (train_pascal_GMMN.py)."""
        with torch.no_grad():
            self.cls.weight.uniform_(0.0, 1.0)
            self.cls.bias.uniform_(0.0, 1.0)

    def calibration_forward(self, images: torch.Tensor) -> None:
        """The forward whose BatchNorm inputs define the frozen statistics (FrozenBatchNorm2d.calibrating)."""
        self.deeplab(images)


def build_zs3net(seen_embeddings: torch.Tensor, all_embeddings: torch.Tensor, num_seen: int, *,
                 feat_dim: int = 600, n_blocks: Sequence[int] = (3, 4, 23, 3), base_width: int = 64,
                 atrous_rates: Sequence[int] = (6, 12, 18, 24), noise_dim: int = 600, gen_hidden: int = 256,
                 gen_dropout: float = 0.5, noise: str = "uniform", ignore_index: int = 255) -> ZS3Net:
    """The model from explicit sizes; the defaults are baselines-spec §2.4's."""
    back = MultiScale(SigmoidDeepLab(DeepLabV2(feat_dim, n_blocks, atrous_rates, base_width)))
    gen = GMMN(all_embeddings.shape[1], noise_dim, gen_hidden, feat_dim, gen_dropout)
    return ZS3Net(back, gen, num_seen, seen_embeddings, all_embeddings, feat_dim, noise, ignore_index)
