"""CaGNet's training: step 1, step 2 and the self-training step (docs/method.md §3, §4, §5).

Gradient routing (docs/method.md §3.8): the classifier ("dis") learns from loss_D, the backbone from loss_B and
the generator from loss_G, all three from one forward pass. The original stepped the classifier's optimizer before
back-propagating loss_B and loss_G through it; PyTorch >= 1.5 rejects that order. Here every gradient is computed
first, then the optimizers step (a deviation of the order of the classifier's learning rate, docs/method.md §9 D1).

Several processes (docs/method.md §8.6): each holds a consecutive part of the global batch. Before the forward
pass one all-gather of the per-process counts (images, visible pixels per pyramid map, the MMD run summary) lets
every process skip the same batches, draw the global batch's random numbers and weight each of its means by its
share of the global count (`_part`), so that the gradients summed over processes are the one-process gradients.
With one process none of this runs: the code path and the numbers are the plain ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch

from libs.config import iter_max, learning_rate
from libs.datasets import build_embedding_tables, load_word_embeddings
from libs.engine.precision import Precision
from libs.engine.trainers.base import Trainer
from libs.losses import (
    CONTENT_LOSSES,
    RunContext,
    RunSummary,
    classification_loss,
    discriminator_gan_loss,
    generator_gan_loss,
    gradient_penalty,
    l1_content_loss,
    mmd_content_loss,
    mse_content_loss,
    plan_boundary_runs,
)
from libs.optimizers import make_optimizer
from libs.pseudo_labels import self_training_labels
from libs.schedulers import build_scheduler
from models import shard as sharding
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
                 content_loss: str = "MMDLoss", parallel=None, precision: Optional[Precision] = None,
                 schedule=None, intervals=None, batch_pixels: Optional[int] = None):
        if content_loss not in CONTENT_LOSSES:
            raise ValueError(f"content_loss must be one of {sorted(CONTENT_LOSSES)}, got {content_loss!r}")
        if critic_updates < 1:
            raise ValueError(f"criticUpdates must be >= 1, got {critic_updates}")
        if critic_updates > 1 and precision is not None and precision.scaler is not None:
            raise ValueError("criticUpdates > 1 cannot run with --amp fp16: the gradient scaler steps each optimizer "
                             "once per iteration; use --amp bf16 or off")
        params = {
            "dis": [p for p in model.dis.parameters() if p.requires_grad],
            "gen": [p for p in model.gen.parameters() if p.requires_grad],
            "back": [p for group in optimizers["back"].param_groups for p in group["params"]],
        }
        super().__init__(model, optimizers, schedulers, params, schedule=schedule, intervals=intervals,
                         parallel=parallel, precision=precision)
        self.content_loss = _CONTENT[content_loss]
        self.w = weights
        self.gan_type = gan_type
        self.critic_updates = critic_updates
        self.update_back = update_back
        self.num_seen, self.num_unseen = num_seen, num_unseen
        self.prior = unseen_prior(num_seen, num_unseen, unseen_rate)
        self.top_p = top_p
        self.num_pixels: Optional[int] = None
        # N*h*w of a full global batch: step 2's size when resuming a weights-only checkpoint in a step-2 block
        self.batch_pixels = batch_pixels

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
    def from_config(cls, cfg, model: CaGNet, splits, schedule, parallel=None,
                    precision: Optional[Precision] = None) -> "CaGNetTrainer":
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
        crop = cfg.value("IMAGE.SIZE.TRAIN")
        h, w = model.feature_shape(crop, crop)
        return cls(model, optimizers, schedulers, LossWeights.from_config(cfg), gan_type=cfg["gan_type"],
                   critic_updates=cfg["criticUpdates"], update_back=cfg["update_back"],
                   num_seen=splits.num_seen, num_unseen=splits.num_unseen, unseen_rate=cfg["gen_unseen_rate"],
                   top_p=cfg["top_p"], content_loss=cfg["content_loss"], parallel=parallel, precision=precision,
                   schedule=schedule, intervals=intervals, batch_pixels=cfg.value("BATCH_SIZE.TRAIN") * h * w)

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
        shard = summaries = None
        if self.parallel is not None:
            shard, summaries = self._global_batch(images, labels)
            if shard is None:
                return None
        with self.precision.autocast():
            # With a frozen backbone (update_back f) nothing needs the backbone's graph: run it without one.
            out = model.step1(images, labels, backbone_grad=self.update_back, shard=shard)
            if out is None:
                return None
            losses, values = self._step1_losses(out, shard, summaries, images.device)
        values = self.checked_values(values)
        if values is None:          # a non-finite loss, skipped before any update (docs/method.md §8.8)
            return None
        self.backward("dis", losses["dis"])
        if self.update_back:
            self.backward("back", losses["back"])
        self.backward("gen", losses["gen"], retain=False)
        self.update("dis")
        rows = None if shard is None else shard.pixels[0]
        dis = model.dis
        for _ in range(self.critic_updates - 1):
            # The original re-used the stale graph with updated weights (PyTorch 1.4 only); here the extra
            # critic steps recompute the GAN loss on the same detached features with the current weights.
            with self.precision.autocast():
                extra = discriminator_gan_loss(dis.score(out.real.detach(), rows), dis.score(out.fake.detach(), rows),
                                               self.gan_type)
                extra = self._part(None if extra is None else extra["D_real"] + extra["D_fake"], rows)
            self.backward("dis", extra, retain=False)
            self.update("dis", scheduler_step=False)
        if self.update_back:
            self.update("back")
        self.update("gen")
        self.precision.end_iteration()
        h, w_ = model.feature_shape(*images.shape[-2:])
        self.num_pixels = (images.shape[0] if shard is None else shard.images.total) * h * w_
        return values

    def _step1_losses(self, out, shard, summaries, device):
        """loss_D, loss_B, loss_G (docs/method.md §3.7) and the logged values of a step-1 forward; with a shard,
        this process's parts of them (weighted means whose sums over processes are the global ones)."""
        w = self.w
        dis = self.model.dis
        rows = [None] * 4 if shard is None else shard.pixels
        part = self._part
        real_detached, fake_detached = out.real.detach(), out.fake.detach()
        d_gan = discriminator_gan_loss(dis.score(real_detached, rows[0]), dis.score(fake_detached, rows[0]),
                                       self.gan_type)
        d_real = part(None if d_gan is None else d_gan["D_real"], rows[0])
        d_fake = part(None if d_gan is None else d_gan["D_fake"], rows[0])
        loss_d_gan = d_real + d_fake
        d_gp = torch.full((), float("nan"), device=device)
        if self.gan_type == "wgan-gp":
            num_images = out.visible.shape[0]
            image_index = out.visible.reshape(num_images, -1).nonzero()[:, 0]
            image_rows = None if shard is None else shard.images
            # drawn as gradient_penalty draws it for one process: in the real features' precision (>= float32)
            alpha = None if shard is None else sharding.rand(
                num_images, image_rows, device=device, dtype=torch.promote_types(real_detached.dtype, torch.float32))
            d_gp = gradient_penalty(lambda x: dis.score(x, rows[0]), real_detached, fake_detached, image_index,
                                    num_images, w.D_gp, alpha=alpha)
            d_gp = part(d_gp, image_rows)
            loss_d_gan = loss_d_gan + d_gp
        cls_fake, acc_fake = self._classification(dis.logits(out.fake, rows[0]), out.labels, rows[0])
        real_terms = [self._classification(dis.logits(f, r), y, r)
                      for f, y, r in zip(out.pyramid_real, out.pyramid_labels, rows)]
        cls_real = sum(t[0] for t in real_terms) / len(real_terms)
        acc_real = sum(t[1] for t in real_terms) / len(real_terms)
        loss_d = loss_d_gan + w.D_cls_real * cls_real + w.D_cls_fake * cls_fake
        g_gan = generator_gan_loss(dis.score(out.fake, rows[0]), self.gan_type)
        g_gan = part(g_gan, rows[0])
        if shard is None:
            content = self.content_loss(out.fake, real_detached, out.labels)
        elif self.content_loss is mmd_content_loss:
            content = part(mmd_content_loss(out.fake, real_detached, out.labels,
                                            context=self._run_context(out, summaries)), None)
        else:
            content = part(self.content_loss(out.fake, real_detached, out.labels) if out.labels.numel() else None,
                           rows[0])
        loss_g = w.G_GAN * g_gan + w.G_Content * content + w.G_cls * cls_fake
        kld = out.kld if shard is None else part(out.kld, rows[0])
        losses = {"dis": loss_d, "back": w.B_KLD * kld + w.B_cls * cls_real, "gen": loss_g}
        values = {"G_GAN": g_gan.detach(), "content": (w.G_Content * content).detach(),
                  "KLD": (w.B_KLD * kld).detach(), "D_real": d_real.detach(), "D_fake": d_fake.detach(),
                  "D_gp": d_gp.detach(), "cls_real": cls_real.detach(), "cls_fake": cls_fake.detach(),
                  "acc_real": acc_real, "acc_fake": acc_fake}
        if self.gan_type != "wgan-gp":
            del values["D_gp"]      # no gradient penalty: nothing to log (a NaN here would look like a fault)
        return losses, values

    # ---- several processes: the global batch ----------------------------------------------------------
    def _global_batch(self, images: torch.Tensor, labels: torch.Tensor):
        """(BatchShard, per-process MMD run summaries), or (None, None) when the global batch has no visible pixel
        at some pyramid scale (every process skips it: the counts come from one all-gather)."""
        model = self.model
        label_maps = model.pyramid_labels(labels, images.shape[-2:])
        counts = torch.stack([(y != model.ignore_index).sum() for y in label_maps]).tolist()
        y = label_maps[0].reshape(-1)
        summary = RunSummary.of(y[y != model.ignore_index])
        gathered = self.parallel.gather_ints([images.shape[0], *counts, *summary.as_list()])
        per_scale = [[row[1 + k] for row in gathered] for k in range(len(label_maps))]
        if any(sum(c) == 0 for c in per_scale):
            return None, None
        rank = self.parallel.rank
        shard = sharding.BatchShard(sharding.Rows.split([row[0] for row in gathered], rank),
                                    [sharding.Rows.split(c, rank) for c in per_scale])
        return shard, [RunSummary(*row[1 + len(label_maps):]) for row in gathered]

    def _run_context(self, out, summaries) -> RunContext:
        """The MMD runs that continue across process boundaries (docs/method.md §3.5, §8.6)."""
        rank = self.parallel.rank
        plans = [plan_boundary_runs(summaries, q) for q in range(len(summaries))]
        if any(plan.crosses for plan in plans):
            return self.parallel.exchange_boundary_runs(out.fake, out.real.detach(), summaries, plans[rank])
        empty = out.fake.new_zeros(0, out.fake.shape[1])
        return RunContext(empty, empty, empty, empty, plans[rank].num_runs)

    @staticmethod
    def _part(value: Optional[torch.Tensor], rows: Optional[sharding.Rows]) -> torch.Tensor:
        """This process's part of a global mean: its own mean weighted by its share of the rows (a zero when it
        holds none); with one process (rows None) the value itself. rows None with a shard: `value` is already
        normalised globally (the MMD)."""
        if value is None:
            return torch.zeros(())
        return value if rows is None else value * rows.share

    def _classification(self, logits, labels, rows):
        if rows is None:
            return classification_loss(logits, labels)
        result = classification_loss(logits, labels)
        if result is None:
            return torch.zeros((), device=logits.device), torch.zeros((), device=logits.device)
        return result[0] * rows.share, result[1] * rows.share

    # ---- step 2 -------------------------------------------------------------------------------------
    def step2(self, num_pixels: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """One step-2 iteration (docs/method.md §3.9): the classifier trained on features generated from noise
        codes for classes drawn with the unseen-weighted prior; no backbone pass. num_pixels defaults to N*h*w
        of the last (global) step-1 batch; several processes split its pixels."""
        num_pixels = self.num_pixels if num_pixels is None else num_pixels
        if num_pixels is None:
            raise ValueError("first: step2 cannot start a schedule: step 2 takes its feature-map size from the "
                             "last step-1 batch, and none has been loaded yet; use first: step1")
        model = self.model
        model.train()
        w = self.w
        rows = None
        if self.parallel is not None:
            world = self.parallel.world_size
            rows = sharding.Rows.split([num_pixels // world + (r < num_pixels % world) for r in range(world)],
                                       self.parallel.rank)
        with self.precision.autocast(), torch.set_grad_enabled(w.G_cls_transfer != 0):
            out = model.step2(num_pixels if rows is None else rows.count, self.prior, rows=rows)
        with self.precision.autocast():
            cls_fake, acc_fake = self._classification(model.dis.logits(out.fake, rows), out.labels, rows)
        values = self.checked_values({"cls_fake": cls_fake.detach(), "acc_fake": acc_fake})
        if values is None:
            return None
        self.backward("dis", w.D_cls_fake_transfer * cls_fake, retain=w.G_cls_transfer != 0)
        self.backward("gen", w.G_cls_transfer * cls_fake, retain=False)
        self.update("dis")
        if self.update_back:
            # Faithful to the original: step 2 advances the backbone's schedule but never its weights.
            self.schedulers["back"].step()
        self.update("gen")
        self.precision.end_iteration()
        return values

    # ---- self-training ------------------------------------------------------------------------------
    def self_training_step(self, images: torch.Tensor, labels: torch.Tensor):
        """Pseudo-label unlabelled pixels with the model in test mode, then a normal step-1 iteration.

        None (skipped, nothing changes) when the label map at feature resolution has no seen pixel (in the
        global batch, decided alike by every process).
        """
        model = self.model
        y = nearest_resize(labels, model.feature_shape(*images.shape[-2:]))
        seen = int((y != model.ignore_index).sum())
        if self.parallel is not None:
            seen = sum(row[0] for row in self.parallel.gather_ints([seen]))
        if seen == 0:
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

    def restart_schedules_at(self, iteration: int) -> None:
        """A weights-only checkpoint (the original's) holds no step-2 size: inside a step-2 block, step 2 takes
        N*h*w of a full global batch (what every step-1 batch but an epoch's last one gives) instead of failing."""
        super().restart_schedules_at(iteration)
        self.num_pixels = self.batch_pixels
