"""CaGNet: backbone + contextual module, generator and classifier, with one forward per training mode.

State-dict children are registered in the original's order: Em_vis, Em_all, gen, dis, back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from models import shard as sharding
from models.backbone import ContextualDeepLab, DeepLabV2, MultiScale, feature_size
from models.classifier import Classifier
from models.contextual import ContextualModule, kl_divergence
from models.generator import FeatureGenerator
from models.ops import nearest_resize, to_pixels

CONTEXTUAL_CONVS = ("contextual1", "contextual2", "contextual3", "contextualpool", "contextuallocalmu",
                    "contextuallocalsigma")


class EmbeddingTable(nn.Module):
    """A frozen class-embedding table kept as a buffer (`<name>.weight`), so `.to(device)` moves it."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight.detach().clone().float())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight[ids]


@dataclass
class Step1Output:
    """Everything the step-1 losses need; pixel matrices hold the visible pixels in (n, i, j) raster order.

    kld: scalar. real: h0 at visible pixels (P, F). fake: generated features (P, F). labels: (P,) train ids.
    visible: bool (N, h, w), where the pixel matrices come from.
    pyramid_real: per pyramid map [h0, h0_0.5, h0_0.75, h0_max], its visible pixels (P_k, F);
    pyramid_labels: their labels (P_k,).
    """
    kld: torch.Tensor
    real: torch.Tensor
    fake: torch.Tensor
    labels: torch.Tensor
    visible: torch.Tensor
    pyramid_real: List[torch.Tensor]
    pyramid_labels: List[torch.Tensor]


@dataclass
class Step2Output:
    """labels: (P,) sampled test ids; fake: (P, F) features generated for them from noise codes."""
    labels: torch.Tensor
    fake: torch.Tensor


class CaGNet(nn.Module):
    """The composed model. seen_embeddings (256, E): rows by train id, zero beyond S (row 255 = ignore);
    all_embeddings (S+U, E): rows by test id."""

    def __init__(self, back: MultiScale, gen: FeatureGenerator, dis: Classifier,
                 seen_embeddings: torch.Tensor, all_embeddings: torch.Tensor, ignore_index: int = 255):
        super().__init__()
        self.Em_vis = EmbeddingTable(seen_embeddings)
        self.Em_all = EmbeddingTable(all_embeddings)
        self.gen = gen
        self.dis = dis
        self.back = back
        self.ignore_index = ignore_index
        self.num_classes = all_embeddings.shape[0]

    # ---- anatomy the engine may rely on ---------------------------------------------------------------
    @property
    def latent_dim(self) -> int:
        """Channels of the contextual latent code z (= the feature dim F); step 2 draws noise codes of this size."""
        return self.back.scale.context.contextuallocalmu.conv.out_channels

    @property
    def deeplab(self) -> DeepLabV2:
        """The single-scale DeepLabV2 network: the part with BatchNorm (for statistics calibration)."""
        return self.back.scale.backbone

    def param_groups(self) -> Dict[str, List[nn.Parameter]]:
        """Trained parameters by optimizer group (docs/method.md §4.2): the backbone's `resnet` (1x), `contextual`
        (5x), `aspp_weight` (10x), `aspp_bias` (20x), and `dis`, `gen`.

        Faithful to the original: the gate conv `fc_1` (its name lacks "contextual"), the BatchNorm affine
        parameters and the embedding tables are in no group and never train.
        """
        scale = self.back.scale
        aspp = list(scale.backbone.aspp.stages.children())
        return {
            "resnet": [m.weight for name, m in scale.backbone.named_modules()
                       if isinstance(m, nn.Conv2d) and name.startswith("layer")],
            "contextual": [getattr(scale.context, name).conv.weight for name in CONTEXTUAL_CONVS],
            "aspp_weight": [conv.weight for conv in aspp],
            "aspp_bias": [conv.bias for conv in aspp],
            "dis": list(self.dis.parameters()),
            "gen": list(self.gen.parameters()),
        }

    # ---- shapes -------------------------------------------------------------------------------------
    @staticmethod
    def feature_shape(height: int, width: int):
        return feature_size(height), feature_size(width)

    def pyramid_shapes(self, height: int, width: int):
        """Feature sizes of the pyramid maps [full, 0.5, 0.75, max] for an input size, without a forward."""
        full = self.feature_shape(height, width)
        scaled = [self.feature_shape(*self.back.scaled_size(height, width, p)) for p in self.back.pyramid_scales]
        return [full, *scaled, full]

    def pyramid_labels(self, labels: torch.Tensor, image_size):
        """labels (N, H', W') resized (nearest) to every pyramid map [full, 0.5, 0.75, max] of an input size."""
        return [nearest_resize(labels, size) for size in self.pyramid_shapes(*image_size)]

    def has_visible_pixels(self, labels: torch.Tensor, image_size) -> bool:
        """The original's "meaningless batch" test, done before any forward: every map of the pyramid needs
        a visible pixel. labels (N, H', W'); image_size (H, W) of the network input."""
        return self._all_visible(self.pyramid_labels(labels, image_size))

    def _all_visible(self, label_maps) -> bool:
        return all(bool((y != self.ignore_index).any()) for y in label_maps)

    # ---- forwards -----------------------------------------------------------------------------------
    def step1(self, images: torch.Tensor, labels: torch.Tensor, backbone_grad: bool = True,
              shard: Optional[sharding.BatchShard] = None) -> Optional[Step1Output]:
        """images (N, 3, H, W); labels (N, H', W') train ids (any resolution; resized nearest per map).
        backbone_grad=False runs the backbone without a graph (frozen backbone: nothing would use it).

        Returns None for a batch with no visible pixel at some scale (the original skips it). With `shard` (this
        process's part of a global batch) the caller has decided that over the global batch, and the random draws
        are those of the global batch (models/shard.py); this part may then have no visible pixel at all.
        KLD is the mean over this part's visible pixels (the caller weights it by shard.pixels[0].share).
        """
        label_maps = self.pyramid_labels(labels, images.shape[-2:])
        if shard is None and not self._all_visible(label_maps):
            return None
        y = label_maps[0]
        visible = y != self.ignore_index
        noise = {} if shard is None else {"noise_rows": shard.images}
        with torch.set_grad_enabled(backbone_grad and torch.is_grad_enabled()):
            out = self.back(images, **noise)
            kld = kl_divergence(out.mu, out.logvar, visible)
            pyramid = self.back.pyramid(images, out.h0, select=lambda scale_out: scale_out.h0, **noise)
        mask = visible.reshape(-1)
        y_vis = y.reshape(-1)[mask]
        real = to_pixels(out.h0)[mask]
        code = to_pixels(out.z)[mask]
        # Faithful to the original: the generator's input is detached, so no generator loss reaches `back`.
        fake = self.gen(self.Em_vis(y_vis), code.detach(), None if shard is None else shard.pixels[0])
        pyramid_real, pyramid_labels = [], []
        for feat, yk in zip(pyramid, label_maps):
            yk = yk.reshape(-1)
            keep = yk != self.ignore_index
            pyramid_real.append(to_pixels(feat)[keep])
            pyramid_labels.append(yk[keep])
        return Step1Output(kld, real, fake, y_vis, visible, pyramid_real, pyramid_labels)

    def step2(self, num_pixels: int, class_prior: torch.Tensor, generator: Optional[torch.Generator] = None,
              rows: Optional[sharding.Rows] = None) -> Step2Output:
        """Generate features for num_pixels pixels whose test ids are drawn i.i.d. from class_prior (S+U,).

        Needs no image: the original ran the backbone on the last batch only to read N*h*w. With `rows` these
        num_pixels = rows.count pixels are this process's rows of a global step-2 batch of rows.total pixels.
        """
        device = self.Em_all.weight.device
        labels = sharding.multinomial(class_prior.to(device), num_pixels, rows, generator)
        noise = sharding.randn((num_pixels, self.latent_dim), rows, device=device, generator=generator)
        return Step2Output(labels, self.gen(self.Em_all(labels), noise, rows))

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (N, C, h, w) from the full-scale h0 only (no pyramid); the caller sets eval mode."""
        return self.dis.logit_maps(self.back(images).h0)

    def calibration_forward(self, images: torch.Tensor) -> None:
        """The forward whose BatchNorm inputs define the frozen statistics (FrozenBatchNorm2d.calibrating)."""
        self.deeplab(images)


def unseen_prior(num_seen: int, num_unseen: int, unseen_rate: float) -> torch.Tensor:
    """Step-2 class prior over test ids: 1 for seen, 1 + gen_unseen_rate for unseen (unnormalised)."""
    return torch.cat([torch.ones(num_seen), torch.full((num_unseen,), 1.0 + unseen_rate)])


def build_cagnet(seen_embeddings: torch.Tensor, all_embeddings: torch.Tensor, num_outputs: int, *,
                 feat_dim: int = 600, n_blocks: Sequence[int] = (3, 4, 23, 3), base_width: int = 64,
                 atrous_rates: Sequence[int] = (6, 12, 18, 24), context_width: int = 256,
                 gen_hidden: Sequence[int] = (1024, 960, 864, 784, 720),
                 gen_dropout: Sequence[float] = (0.1, 0.1, 0.3, 0.5, 0.5),
                 dis_hidden: int = 1024, dis_dropout: float = 0.5, ignore_index: int = 255) -> CaGNet:
    """Build the model from explicit sizes; the defaults are the paper's."""
    back = MultiScale(ContextualDeepLab(
        DeepLabV2(feat_dim, n_blocks, atrous_rates, base_width), ContextualModule(feat_dim, context_width)))
    gen = FeatureGenerator(seen_embeddings.shape[1] + feat_dim, feat_dim, gen_hidden, gen_dropout)
    dis = Classifier(feat_dim, dis_hidden, num_outputs, dis_dropout)
    return CaGNet(back, gen, dis, seen_embeddings, all_embeddings, ignore_index)
