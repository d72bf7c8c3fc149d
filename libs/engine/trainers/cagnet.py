"""CaGNet's training: step 1, step 2 and the self-training step (docs/method.md §3, §4, §5).

Gradient routing (docs/method.md §3.8): the classifier ("dis") learns from loss_D, the backbone from loss_B and
the generator from loss_G, all three from one forward pass. The original stepped the classifier's optimizer before
back-propagating loss_B and loss_G through it; PyTorch >= 1.5 rejects that order. Here every gradient is computed
first, then the optimizers step (a deviation of the order of the classifier's learning rate, docs/method.md §9 D1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch

from libs.config import iter_max, learning_rate
from libs.datasets import build_embedding_tables, load_word_embeddings
from libs.engine.trainers.base import Trainer
from libs.losses import (
    CONTENT_LOSSES,
    classification_loss,
    discriminator_gan_loss,
    generator_gan_loss,
    gradient_penalty,
    l1_content_loss,
    mmd_content_loss,
    mse_content_loss,
)
from libs.optimizers import make_optimizer
from libs.pseudo_labels import self_training_labels
from libs.schedulers import build_scheduler
from models.cagnet import CaGNet, build_cagnet, unseen_prior
from models.ops import nearest_resize

# Backbone parameter groups (docs/method.md §4.2): multiplier of the base learning rate and whether weight decay
# applies; CaGNet.param_groups() names them.
BACKBONE_GROUPS = (("resnet", 1.0, True), ("contextual", 5.0, True), ("aspp_weight", 10.0, True),
                   ("aspp_bias", 20.0, False))

_CONTENT = {"MMDLoss": mmd_content_loss, "ContentLoss": l1_content_loss, "ContentLossMSE": mse_content_loss}


def backbone_optimizer(model: CaGNet, kind: str, lr: float, weight_decay: float, momentum: float = 0.9,
                       multipliers=None):
    """multipliers: per group (resnet, contextual, ASPP weights, ASPP biases); default the paper's 1/5/10/20."""
    params = model.param_groups()
    multipliers = [m for _, m, _ in BACKBONE_GROUPS] if multipliers is None else list(multipliers)
    if len(multipliers) != len(BACKBONE_GROUPS):
        raise ValueError(f"back_opt.lr_multipliers needs {len(BACKBONE_GROUPS)} values, got {multipliers}")
    groups = [{"params": params[name], "lr": lr * mult, "lr_mult": mult,
               "weight_decay": weight_decay if decay else 0.0, "name": name}
              for (name, _, decay), mult in zip(BACKBONE_GROUPS, multipliers)]
    return make_optimizer(kind, groups, lr, weight_decay, momentum)


@dataclass(frozen=True)
class LossWeights:
    """The λ of the config (docs/method.md §3.7, §3.9)."""
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

    @classmethod
    def from_config(cls, cfg) -> "LossWeights":
        return cls(**{name: float(cfg[f"lambda_{name}"]) for name in cls.__dataclass_fields__})


class CaGNetTrainer(Trainer):
    """Owns the three optimizers and schedulers ("dis", "gen", "back") and performs one iteration of each kind.

    num_pixels (N*h*w of the last step-1 batch) is part of its state: step 2 generates that many pixels.
    """

    networks = ("dis", "gen", "back")

    def __init__(self, model: CaGNet, optimizers: Dict[str, torch.optim.Optimizer], schedulers: Dict[str, object],
                 weights: LossWeights, *, gan_type: str = "lsgan", critic_updates: int = 1, update_back: bool = True,
                 num_seen: int, num_unseen: int, unseen_rate: float = 0.0, top_p: int = 1,
                 content_loss: str = "MMDLoss", grad_sync=None, schedule=None, intervals=None):
        if content_loss not in CONTENT_LOSSES:
            raise ValueError(f"content_loss must be one of {sorted(CONTENT_LOSSES)}, got {content_loss!r}")
        if critic_updates < 1:
            raise ValueError(f"criticUpdates must be >= 1, got {critic_updates}")
        params = {
            "dis": [p for p in model.dis.parameters() if p.requires_grad],
            "gen": [p for p in model.gen.parameters() if p.requires_grad],
            "back": [p for group in optimizers["back"].param_groups for p in group["params"]],
        }
        super().__init__(model, optimizers, schedulers, params, schedule=schedule, intervals=intervals,
                         grad_sync=grad_sync)
        self.content_loss = _CONTENT[content_loss]
        self.w = weights
        self.gan_type = gan_type
        self.critic_updates = critic_updates
        self.update_back = update_back
        self.num_seen, self.num_unseen = num_seen, num_unseen
        self.prior = unseen_prior(num_seen, num_unseen, unseen_rate)
        self.top_p = top_p
        self.num_pixels: Optional[int] = None

    # ---- built from a config ----------------------------------------------------------------------------
    @classmethod
    def build_model(cls, cfg, splits) -> CaGNet:
        """The model with its embedding tables built from the word-vector files (docs/method.md §6.5)."""
        embeddings = load_word_embeddings(cfg["datadir"], cfg["dataset"], cfg["embedding"],
                                          cfg["emb_without_normal"])
        feat_dim = cfg.value("back.n_classes")
        em_vis, em_all = build_embedding_tables(embeddings, splits,
                                                expected_dim=cfg.value("gen.in_dim_mlp") - feat_dim)
        return build_cagnet(
            em_vis, em_all, cfg.value("dis.out_dim_cls"), feat_dim=feat_dim, n_blocks=cfg.value("back.n_blocks"),
            base_width=cfg.value("back.base_width"), atrous_rates=cfg.value("back.aspp_rates"),
            context_width=cfg.value("back.context_width"), gen_hidden=cfg.value("gen.hidden_dims_mlp"),
            gen_dropout=cfg.value("gen.dropout_mlp"), dis_hidden=cfg.value("dis.out_dim_fc"),
            dis_dropout=cfg.value("dis.drop_fc"), ignore_index=cfg.value("ignore_index"))

    @classmethod
    def from_config(cls, cfg, model: CaGNet, splits, schedule, grad_sync=None) -> "CaGNetTrainer":
        """Optimizers with the active schedule's learning rates (docs/method.md §4) and their schedulers."""
        max_iter = iter_max(cfg, schedule.name)
        back_opt, dis_opt, gen_opt = cfg["back_opt"], cfg["dis_opt"], cfg["gen_opt"]
        groups = model.param_groups()
        optimizers = {
            "back": backbone_optimizer(model, back_opt["OPTIMIZER"], learning_rate(cfg, "back", schedule.name),
                                       back_opt["WEIGHT_DECAY"], back_opt["MOMENTUM"],
                                       back_opt.value("lr_multipliers")),
            "dis": make_optimizer(dis_opt["OPTIMIZER"], [{"params": groups["dis"]}],
                                  learning_rate(cfg, "dis", schedule.name), dis_opt["weight_decay"]),
            "gen": make_optimizer(gen_opt["OPTIMIZER"], [{"params": groups["gen"]}],
                                  learning_rate(cfg, "gen", schedule.name), gen_opt["weight_decay"]),
        }
        schedulers: Dict[str, object] = {}
        for net in ("dis", "gen", "back"):
            sched = cfg[f"{net}_scheduler"]
            # Faithful to the original: the poly scheduler's init/max come from the active schedule's
            # lr and ITER_MAX, whatever back_scheduler.init_lr*/max_iter* say.
            schedulers[net] = build_scheduler(
                optimizers[net], sched["lr_policy"], init_lr=learning_rate(cfg, net, schedule.name),
                max_iter=max_iter, power=sched.value("power", 0.9), lr_decay_iter=sched.value("lr_decay_iter", 1),
                start_decay_iter=sched.value("start_decay_iter", 0), step_size=sched.value("step_size", 1),
                gamma=sched.value("gamma", 1.0))
        intervals = (cfg["interval_step1"], cfg["interval_step2"], cfg["first"]) if schedule.alternates else None
        return cls(model, optimizers, schedulers, LossWeights.from_config(cfg), gan_type=cfg["gan_type"],
                   critic_updates=cfg["criticUpdates"], update_back=cfg["update_back"],
                   num_seen=splits.num_seen, num_unseen=splits.num_unseen, unseen_rate=cfg["gen_unseen_rate"],
                   top_p=cfg["top_p"], content_loss=cfg["content_loss"], grad_sync=grad_sync, schedule=schedule,
                   intervals=intervals)

    # ---- what the loop calls ----------------------------------------------------------------------------
    def needs_batch(self, phase: str) -> bool:
        return phase != "step2"      # step 2 generates features from noise codes: it loads no data

    def step(self, phase: str, batch) -> Optional[Dict[str, torch.Tensor]]:
        if phase == "step2":
            return self.step2()
        images, labels = batch
        if self.schedule is not None and self.schedule.pseudo_labels:
            return self.self_training_step(images, labels)
        return self.step1(images, labels)

    # ---- step 1 -------------------------------------------------------------------------------------
    def step1(self, images: torch.Tensor, labels: torch.Tensor) -> Optional[Dict[str, torch.Tensor]]:
        """One step-1 iteration (docs/method.md §3.7). labels: train ids (N, H', W'). None = batch skipped."""
        model = self.model
        model.train()
        # With a frozen backbone (update_back f) nothing needs the backbone's graph: run it without one.
        out = model.step1(images, labels, backbone_grad=self.update_back)
        if out is None:
            return None
        w = self.w
        dis = model.dis
        real_detached, fake_detached = out.real.detach(), out.fake.detach()
        d_gan = discriminator_gan_loss(dis.score(real_detached), dis.score(fake_detached), self.gan_type)
        loss_d_gan = d_gan["D_real"] + d_gan["D_fake"]
        d_gp = torch.full((), float("nan"), device=images.device)
        if self.gan_type == "wgan-gp":
            image_index = out.visible.reshape(out.visible.shape[0], -1).nonzero()[:, 0]
            d_gp = gradient_penalty(dis.score, real_detached, fake_detached, image_index, out.visible.shape[0],
                                    w.D_gp)
            loss_d_gan = loss_d_gan + d_gp
        cls_fake, acc_fake = classification_loss(dis.logits(out.fake), out.labels)
        real_terms = [classification_loss(dis.logits(f), y) for f, y in zip(out.pyramid_real, out.pyramid_labels)]
        cls_real = sum(t[0] for t in real_terms) / len(real_terms)
        acc_real = sum(t[1] for t in real_terms) / len(real_terms)
        loss_d = loss_d_gan + w.D_cls_real * cls_real + w.D_cls_fake * cls_fake
        g_gan = generator_gan_loss(dis.score(out.fake), self.gan_type)
        content = self.content_loss(out.fake, real_detached, out.labels)
        loss_g = w.G_GAN * g_gan + w.G_Content * content + w.G_cls * cls_fake

        self.backward("dis", loss_d)
        if self.update_back:
            self.backward("back", w.B_KLD * out.kld + w.B_cls * cls_real)
        self.backward("gen", loss_g, retain=False)
        self.update("dis")
        for _ in range(self.critic_updates - 1):
            # The original re-used the stale graph with updated weights (PyTorch 1.4 only); here the extra
            # critic steps recompute the GAN loss on the same detached features with the current weights.
            extra = discriminator_gan_loss(dis.score(real_detached), dis.score(fake_detached), self.gan_type)
            self.backward("dis", extra["D_real"] + extra["D_fake"], retain=False)
            self.update("dis", scheduler_step=False)
        if self.update_back:
            self.update("back")
        self.update("gen")
        h, w_ = model.feature_shape(*images.shape[-2:])
        self.num_pixels = images.shape[0] * h * w_
        return {"G_GAN": g_gan.detach(), "content": (w.G_Content * content).detach(),
                "KLD": (w.B_KLD * out.kld).detach(), "D_real": d_gan["D_real"].detach(),
                "D_fake": d_gan["D_fake"].detach(), "D_gp": d_gp.detach(), "cls_real": cls_real.detach(),
                "cls_fake": cls_fake.detach(), "acc_real": acc_real, "acc_fake": acc_fake}

    # ---- step 2 -------------------------------------------------------------------------------------
    def step2(self, num_pixels: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """One step-2 iteration (docs/method.md §3.9): the classifier trained on features generated from noise
        codes for classes drawn with the unseen-weighted prior; no backbone pass. num_pixels defaults to N*h*w
        of the last step-1 batch."""
        num_pixels = self.num_pixels if num_pixels is None else num_pixels
        if num_pixels is None:
            raise ValueError("first: step2 cannot start a schedule: step 2 takes its feature-map size from the "
                             "last step-1 batch, and none has been loaded yet; use first: step1")
        model = self.model
        model.train()
        w = self.w
        with torch.set_grad_enabled(w.G_cls_transfer != 0):
            out = model.step2(num_pixels, self.prior)
        cls_fake, acc_fake = classification_loss(model.dis.logits(out.fake), out.labels)
        self.backward("dis", w.D_cls_fake_transfer * cls_fake, retain=w.G_cls_transfer != 0)
        self.backward("gen", w.G_cls_transfer * cls_fake, retain=False)
        self.update("dis")
        if self.update_back:
            # Faithful to the original: step 2 advances the backbone's schedule but never its weights.
            self.schedulers["back"].step()
        self.update("gen")
        return {"cls_fake": cls_fake.detach(), "acc_fake": acc_fake}

    # ---- self-training ------------------------------------------------------------------------------
    def self_training_step(self, images: torch.Tensor, labels: torch.Tensor):
        """Pseudo-label unlabelled pixels with the model in test mode, then a normal step-1 iteration.

        None (skipped, nothing changes) when the label map at feature resolution has no seen pixel.
        """
        model = self.model
        y = nearest_resize(labels, model.feature_shape(*images.shape[-2:]))
        if not bool((y != model.ignore_index).any()):
            # Faithful to the original: a batch without a seen pixel at feature resolution is skipped before
            # pseudo-labelling, not trained on pseudo-labels alone (docs/method.md §3.10).
            return None
        model.eval()
        with torch.no_grad():
            logits = model.predict(images)
        pseudo = self_training_labels(y, logits, self.num_seen, self.num_unseen, self.top_p,
                                      ignore_index=model.ignore_index)
        return self.step1(images, pseudo)

    # ---- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {**super().state_dict(), "num_pixels": self.num_pixels}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.num_pixels = state.get("num_pixels")
