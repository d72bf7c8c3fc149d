"""Optimizers, parameter groups, one training step per mode, and the evaluation loop (method-spec §3, §4, §8).

Gradient routing (spec §3.2): the discriminator/classifier learns from loss_D, the backbone from loss_B and the
generator from loss_G, all three from one forward pass. The original stepped the classifier's optimizer before
back-propagating loss_B and loss_G through it; PyTorch >= 1.5 rejects that order. Here every gradient is
computed first (each backward limited with `inputs=` to the parameters it trains, so no pass walks a part of
the graph whose gradients would be thrown away), then the optimizers step.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import cv2
import numpy as np
import torch
import torch.nn as nn

from libs.labels import nearest_resize
from libs.losses import (classification_loss, discriminator_gan_loss, generator_gan_loss, gradient_penalty,
                         mmd_content_loss)
from libs.metrics import gzsl_scores, new_confusion, update_confusion
from libs.pseudo_labels import self_training_labels
from models.backbone import FrozenBatchNorm2d
from models.cagnet import CaGNet, unseen_prior
from models.pixelwise import to_maps, to_pixels

# Backbone parameter groups (spec §4): multiplier of the base learning rate and whether weight decay applies.
BACKBONE_GROUPS = (("resnet", 1.0, True), ("contextual", 5.0, True), ("aspp_weight", 10.0, True),
                   ("aspp_bias", 20.0, False))
CONTEXTUAL_CONVS = ("contextual1", "contextual2", "contextual3", "contextualpool", "contextuallocalmu",
                    "contextuallocalsigma")


def backbone_parameters(model: CaGNet) -> Dict[str, List[nn.Parameter]]:
    """The four groups by explicit module lists. Faithful to the original: the gate conv `fc_1` (its name
    lacks "contextual"), BatchNorm affine parameters and the embeddings are in no group and never train."""
    scale = model.back.scale
    resnet = [m.weight for name, m in scale.backbone.named_modules()
              if isinstance(m, nn.Conv2d) and name.startswith("layer")]
    aspp = list(scale.backbone.aspp.stages.children())
    return {
        "resnet": resnet,
        "contextual": [getattr(scale.context, name).conv.weight for name in CONTEXTUAL_CONVS],
        "aspp_weight": [conv.weight for conv in aspp],
        "aspp_bias": [conv.bias for conv in aspp],
    }


def make_optimizer(kind: str, groups: List[dict], lr: float, weight_decay: float, momentum: float = 0.9):
    """sgd (momentum, no Nesterov), adam (default betas; coupled L2 decay, not AdamW) or rmsprop."""
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if kind == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    if kind == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"OPTIMIZER must be one of sgd, adam, rmsprop; got {kind!r}")


def backbone_optimizer(model: CaGNet, kind: str, lr: float, weight_decay: float, momentum: float = 0.9,
                       multipliers=None):
    """multipliers: per group (resnet, contextual, ASPP weights, ASPP biases); default the paper's 1/5/10/20."""
    params = backbone_parameters(model)
    multipliers = [m for _, m, _ in BACKBONE_GROUPS] if multipliers is None else list(multipliers)
    if len(multipliers) != len(BACKBONE_GROUPS):
        raise ValueError(f"back_opt.lr_multipliers needs {len(BACKBONE_GROUPS)} values, got {multipliers}")
    groups = [{"params": params[name], "lr": lr * mult, "lr_mult": mult,
               "weight_decay": weight_decay if decay else 0.0, "name": name}
              for (name, _, decay), mult in zip(BACKBONE_GROUPS, multipliers)]
    return make_optimizer(kind, groups, lr, weight_decay, momentum)


@dataclass(frozen=True)
class LossWeights:
    """The λ of the config (spec §3.2, §3.3)."""
    D_cls_real: float = 1.0
    D_cls_fake: float = 0.0
    D_cls_fake_transfer: float = 0.0
    D_gp: float = 10.0
    B_KLD: float = 100.0
    B_cls: float = 0.5
    G_GAN: float = 1.0
    G_Content: float = 50.0
    G_cls: float = 0.0
    G_cls_transfer: float = 0.0


def _as_map(pixels: torch.Tensor) -> torch.Tensor:
    """(P, C) pixel matrix -> (1, C, P, 1) map, so the map-based losses see the same raster order."""
    return pixels.t().reshape(1, pixels.shape[1], pixels.shape[0], 1)


def _as_label_map(labels: torch.Tensor) -> torch.Tensor:
    return labels.reshape(1, -1, 1)


def pixel_classification(dis, features: torch.Tensor, labels: torch.Tensor):
    """Cross-entropy and accuracy of the classifier head on a pixel matrix (P, F) with labels (P,)."""
    return classification_loss(_as_map(dis.logits(features)), _as_label_map(labels))


def scatter_pixels(pixels: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """(P, F) features of the visible pixels -> (N, F, h, w) maps with zeros elsewhere."""
    n, h, w = visible.shape
    maps = pixels.new_zeros(n, h, w, pixels.shape[1])
    maps[visible] = pixels
    return maps.permute(0, 3, 1, 2)


def dis_score_maps(dis, maps: torch.Tensor) -> torch.Tensor:
    n, _, h, w = maps.shape
    return to_maps(dis.score(to_pixels(maps)), n, h, w)


def _mmd(fake, real, labels):
    return mmd_content_loss(_as_map(fake), _as_map(real), _as_label_map(labels),
                            torch.ones(1, 1, fake.shape[0], 1, dtype=torch.bool, device=fake.device))


# Content losses on visible pixels (P, F): the original's MMD over runs of equal labels (used by every
# config), and its unused alternatives, masked-mean L1 and squared error.
CONTENT_LOSSES = {
    "MMDLoss": _mmd,
    "ContentLoss": lambda fake, real, labels: (fake - real).abs().mean(),
    "ContentLossMSE": lambda fake, real, labels: (fake - real).pow(2).mean(),
}


class Trainer:
    """Owns the three optimizers and schedulers and performs one iteration of each kind."""

    def __init__(self, model: CaGNet, optimizers: Dict[str, torch.optim.Optimizer], schedulers: Dict[str, object],
                 weights: LossWeights, *, gan_type: str = "lsgan", critic_updates: int = 1, update_back: bool = True,
                 num_seen: int, num_unseen: int, unseen_rate: float = 0.0, top_p: int = 1,
                 content_loss: str = "MMDLoss", grad_sync=None):
        if content_loss not in CONTENT_LOSSES:
            raise ValueError(f"content_loss must be one of {sorted(CONTENT_LOSSES)}, got {content_loss!r}")
        self.content_loss = CONTENT_LOSSES[content_loss]
        if critic_updates < 1:
            raise ValueError(f"criticUpdates must be >= 1, got {critic_updates}")
        self.model = model
        self.optimizers = optimizers
        self.schedulers = schedulers
        self.w = weights
        self.gan_type = gan_type
        self.critic_updates = critic_updates
        self.update_back = update_back
        self.num_seen, self.num_unseen = num_seen, num_unseen
        self.prior = unseen_prior(num_seen, num_unseen, unseen_rate)
        self.top_p = top_p
        self.grad_sync = grad_sync  # all-reduces gradients across processes (multi-GPU), or None
        self.params = {
            "dis": [p for p in model.dis.parameters() if p.requires_grad],
            "gen": [p for p in model.gen.parameters() if p.requires_grad],
            "back": [p for group in optimizers["back"].param_groups for p in group["params"]],
        }

    # ---- helpers ------------------------------------------------------------------------------------
    def _backward(self, net: str, loss: torch.Tensor, retain: bool = True) -> None:
        """Gradients of `loss` for one network's parameters only; other networks' .grad stay untouched."""
        for p in self.params[net]:
            p.grad = None
        if loss.requires_grad:
            loss.backward(inputs=self.params[net], retain_graph=retain)
        for p in self.params[net]:
            if p.grad is None:
                # Faithful to the original: a network whose loss is identically 0 still steps with zero
                # gradients, so Adam keeps moving it with its stored moments (spec §3.3).
                p.grad = torch.zeros_like(p)

    def _step(self, net: str) -> None:
        if self.grad_sync is not None:
            self.grad_sync(self.params[net])
        self.optimizers[net].step()
        self.schedulers[net].step()

    # ---- step 1 -------------------------------------------------------------------------------------
    def step1(self, images: torch.Tensor, labels: torch.Tensor) -> Optional[Dict[str, torch.Tensor]]:
        """One step-1 iteration (spec §3.2). labels: train ids (N, H', W'). None = batch skipped."""
        model = self.model
        model.train()
        # With a frozen backbone (update_back f) nothing needs the backbone's graph: run it without one.
        out = model.step1(images, labels, backbone_grad=self.update_back)
        if out is None:
            return None
        w = self.w
        dis = model.dis
        real_detached, fake_detached = out.real.detach(), out.fake.detach()
        ones = torch.ones(1, 1, out.real.shape[0], 1, dtype=torch.bool, device=out.real.device)
        d_gan = discriminator_gan_loss(_as_map(dis.score(real_detached)), _as_map(dis.score(fake_detached)),
                                       ones, self.gan_type)
        loss_d_gan = d_gan["D_real"] + d_gan["D_fake"]
        d_gp = torch.full((), float("nan"), device=images.device)
        if self.gan_type == "wgan-gp":
            # The penalty is per image, so the visible pixels go back into (N, F, h, w) maps; the classifier
            # is pixel-wise and the gradient is masked, so the zero-filled hidden pixels contribute nothing.
            d_gp = gradient_penalty(lambda x: dis_score_maps(dis, x), scatter_pixels(real_detached, out.visible),
                                    scatter_pixels(fake_detached, out.visible), out.visible, w.D_gp)
            loss_d_gan = loss_d_gan + d_gp
        cls_fake, acc_fake = pixel_classification(dis, out.fake, out.labels)
        real_terms = [pixel_classification(dis, f, y) for f, y in zip(out.pyramid_real, out.pyramid_labels)]
        cls_real = sum(t[0] for t in real_terms) / len(real_terms)
        acc_real = sum(t[1] for t in real_terms) / len(real_terms)
        loss_d = loss_d_gan + w.D_cls_real * cls_real + w.D_cls_fake * cls_fake
        g_gan = generator_gan_loss(_as_map(dis.score(out.fake)), ones, self.gan_type)
        content = self.content_loss(out.fake, real_detached, out.labels)
        loss_g = w.G_GAN * g_gan + w.G_Content * content + w.G_cls * cls_fake

        self._backward("dis", loss_d)
        if self.update_back:
            self._backward("back", w.B_KLD * out.kld + w.B_cls * cls_real)
        self._backward("gen", loss_g, retain=False)
        self._step("dis")
        for _ in range(self.critic_updates - 1):
            # The original re-used the stale graph with updated weights (PyTorch 1.4 only); here the extra
            # critic steps recompute the GAN loss on the same detached features with the current weights.
            extra = discriminator_gan_loss(_as_map(dis.score(real_detached)),
                                           _as_map(dis.score(fake_detached)), ones, self.gan_type)
            self._backward("dis", extra["D_real"] + extra["D_fake"], retain=False)
            self.optimizers["dis"].step()
        if self.update_back:
            self._step("back")
        self._step("gen")
        return {"G_GAN": g_gan.detach(), "content": (w.G_Content * content).detach(),
                "KLD": (w.B_KLD * out.kld).detach(), "D_real": d_gan["D_real"].detach(),
                "D_fake": d_gan["D_fake"].detach(), "D_gp": d_gp.detach(), "cls_real": cls_real.detach(),
                "cls_fake": cls_fake.detach(), "acc_real": acc_real, "acc_fake": acc_fake}

    # ---- step 2 -------------------------------------------------------------------------------------
    def step2(self, num_pixels: int) -> Dict[str, torch.Tensor]:
        """One step-2 iteration (spec §3.3): classifier trained on features generated from noise codes for
        classes drawn with the unseen-weighted prior; no backbone pass. num_pixels = N*h*w of the last batch."""
        model = self.model
        model.train()
        w = self.w
        with torch.set_grad_enabled(w.G_cls_transfer != 0):
            out = model.step2(num_pixels, self.prior)
        cls_fake, acc_fake = pixel_classification(model.dis, out.fake, out.labels)
        self._backward("dis", w.D_cls_fake_transfer * cls_fake, retain=w.G_cls_transfer != 0)
        self._backward("gen", w.G_cls_transfer * cls_fake, retain=False)
        self._step("dis")
        if self.update_back:
            # Faithful to the original: step 2 advances the backbone's schedule but never its weights.
            self.schedulers["back"].step()
        self._step("gen")
        return {"cls_fake": cls_fake.detach(), "acc_fake": acc_fake}

    # ---- self-training ------------------------------------------------------------------------------
    def self_training_step(self, images: torch.Tensor, labels: torch.Tensor):
        """Pseudo-label unlabelled pixels with the model in test mode, then a normal step-1 iteration."""
        model = self.model
        model.eval()
        with torch.no_grad():
            logits = model.predict(images)
        y = nearest_resize(labels, logits.shape[-2:])
        pseudo = self_training_labels(y, logits, self.num_seen, self.num_unseen, self.top_p)
        return self.step1(images, pseudo)

    # ---- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()}}

    def load_state_dict(self, state: dict) -> None:
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for k, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][k])


# ---- evaluation -----------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: CaGNet, loader, splits, device, predictions_dir: Optional[str] = None, progress=None) -> dict:
    """The original's protocol (spec §8): argmax of the classifier on the full-scale h0 of the warped input,
    scored against the raw label resized nearest to the feature size, one confusion matrix over the test set.

    predictions_dir: write `<image id>.png` per image with the predicted raw label ids at that resolution
    (the dead channel, never a class, is written as 255).
    """
    model.eval()
    n = splits.num_classes
    confusion = new_confusion(n, device)
    test_map = torch.tensor(np.array(splits.test_map), device=device)
    to_raw = torch.full((n + 1,), 255, dtype=torch.long)
    to_raw[:n] = torch.tensor(np.array(splits.test_ids_to_raw))
    if predictions_dir:
        os.makedirs(predictions_dir, exist_ok=True)
    for images, raw_labels, image_ids in (progress(loader) if progress else loader):
        logits = model.predict(images.to(device, non_blocking=True))
        pred = logits.argmax(1)
        raw_small = nearest_resize(raw_labels.to(device, non_blocking=True), pred.shape[-2:])
        gt = test_map[raw_small.clamp(0, 255)]
        update_confusion(confusion, gt, pred, n)
        if predictions_dir:
            raw_pred = to_raw[pred.cpu()].numpy().astype(np.uint8)
            for image_id, pred_map in zip(image_ids, raw_pred):
                path = os.path.join(predictions_dir, f"{image_id}.png")
                if not cv2.imwrite(path, pred_map):
                    raise OSError(f"could not write the prediction {path}")
    return gzsl_scores(confusion.cpu(), splits.num_seen)


@torch.no_grad()
def calibrate_batchnorm(model: CaGNet, batches, device) -> int:
    """Estimate the frozen BatchNorm statistics of a from-scratch backbone from training batches.

    Not in the original (which always starts from pretrained statistics): a randomly initialised backbone
    with default statistics saturates the sigmoid features; the demo needs this (config key
    back.bn_calibration_batches). Returns the number of batches used.
    """
    bns = [m for m in model.back.modules() if isinstance(m, FrozenBatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None      # cumulative average over the calibration batches
        bn.training = True      # bypass FrozenBatchNorm2d.train(): only here may statistics change
    used = 0
    try:
        for images in batches:
            model.back.scale.backbone(images.to(device))
            used += 1
    finally:
        for bn in bns:
            bn.training = False
            bn.momentum = 0.999
    return used
