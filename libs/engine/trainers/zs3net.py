"""ZS3Net and ZS3Net+ST training on CaGNet's backbone and protocol (docs/baselines.md, baselines-spec §2.4,
§3).

Schedules (the `--schedule` vocabulary of CaGNet, `STAGES` below):
* `step1` — stage 1, seen segmentation: cross-entropy of the classifier on the 4 MSC feature maps, averaged
  (CaGNet's cls_real); backbone (`back`) and classifier (`dis`) train.
* `mixed` — stage 2 (ZS3's GMMN finetuning; CaGNet's finetuning schedule name): the backbone is frozen, every
  iteration (a) trains the GMMN generator (`gen`) with one Adam step per image and seen class present and (b) takes
  one classifier step on real seen features plus generated unseen features. No iteration alternates.
* `st` — ZS3Net+ST: stage 1 again from the ZS3Net model, with the top p% unseen pseudo-labels as targets.
* `st_mixed` — stage 2 again from the `st` model, the pseudo-labelled real unseen pixels joining the classifier
  batch.

Clean protocol (CaGNet's): no unseen ground truth is read anywhere — unseen pixels are 255 in the training labels
and no image is selected by its content. ZS3's own code places generated features on the unseen ground-truth masks
of the images that contain unseen classes (train_pascal_GMMN.py:244-259; issues valeoai/ZS3#1, #10): that leaks
the unseen labels into training, so stage 2 here generates a fixed number of features per unseen class instead
(n_u, `classifier_batch`).

Several processes: the per-(image, class) generator steps are sequential Adam steps on single images; they are not
split over processes, and zs3net refuses to run under torchrun (a clear error in `from_config`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch

from libs.config import iter_max, learning_rate
from libs.datasets import build_embedding_tables, load_word_embeddings
from libs.engine.precision import Precision
from libs.engine.trainers.base import Trainer
from libs.engine.trainers.cagnet import backbone_optimizer
from libs.losses import classification_loss, gmmn_mmd_loss
from libs.optimizers import make_optimizer
from libs.pseudo_labels import top_percent_labels
from libs.schedulers import build_scheduler
from models.ops import nearest_resize, to_pixels
from models.zs3net import ZS3Net, build_zs3net


@dataclass(frozen=True)
class Stage:
    """What a --schedule means for zs3net: `segmentation` (stage 1) or `classifier` (stage 2), and whether the
    training labels get ZS3Net+ST pseudo-labels."""
    kind: str
    pseudo_labels: bool


STAGES = {
    "step1": Stage("segmentation", False),
    "mixed": Stage("classifier", False),
    "st": Stage("segmentation", True),
    "st_mixed": Stage("classifier", True),
}


def unseen_count(num_visible: int, num_seen: int, unseen_rate: float) -> int:
    """Generated features per unseen class in one classifier batch: n_u = (1 + gen_unseen_rate) * ceil(V / S),
    rounded to an integer. V/S is an average seen class's share of the V real pixels, so an unseen class is
    (1 + rate) times as frequent as an average seen class (CaGNet's unseen emphasis, baselines-spec §2.4)."""
    return int(round((1.0 + float(unseen_rate)) * math.ceil(num_visible / num_seen)))


class ZS3NetTrainer(Trainer):
    """Owns the optimizers "dis" (classifier), "gen" (GMMN) and "back" (backbone), one step per iteration."""

    networks = ("dis", "gen", "back")

    def __init__(self, model: ZS3Net, optimizers: Dict[str, torch.optim.Optimizer], schedulers: Dict[str, object],
                 *, stage: Stage, num_seen: int, num_unseen: int, unseen_rate: float, sigmas: Sequence[float],
                 mmd_samples: int = 128, percent: float = 25.0, schedule=None, parallel=None,
                 precision: Optional[Precision] = None):
        if parallel is not None:
            raise ValueError("method zs3net runs in one process only: stage 2 takes one generator Adam step per "
                             "training image and seen class, which several processes cannot share; run train.py "
                             "without torchrun / --multigpus")
        groups = model.param_groups()
        params = {"dis": groups["dis"], "gen": groups["gen"],
                  "back": [p for group in optimizers["back"].param_groups for p in group["params"]]}
        if not sigmas or min(sigmas) <= 0:
            raise ValueError(f"zs3_mmd_sigmas must be a non-empty list of positive bandwidths, got {list(sigmas)}")
        if not 0 < float(percent) <= 100:
            raise ValueError(f"zs3_pseudo_label_percent must be in (0, 100], got {percent}")
        super().__init__(model, optimizers, schedulers, params, schedule=schedule, parallel=None,
                         precision=precision)
        self.stage = stage
        self.num_seen, self.num_unseen = int(num_seen), int(num_unseen)
        self.unseen_rate = float(unseen_rate)
        self.sigmas = tuple(float(s) for s in sigmas)
        self.mmd_samples = int(mmd_samples)
        self.percent = float(percent)

    # ---- built from a config ----------------------------------------------------------------------------
    @classmethod
    def build_model(cls, cfg, splits) -> ZS3Net:
        embeddings = load_word_embeddings(cfg["datadir"], cfg["dataset"], cfg["embedding"],
                                          cfg["emb_without_normal"])
        em_vis, em_all = build_embedding_tables(embeddings, splits)
        return build_zs3net(
            em_vis, em_all, splits.num_seen, feat_dim=cfg.value("back.n_classes"),
            n_blocks=cfg.value("back.n_blocks"), base_width=cfg.value("back.base_width"),
            atrous_rates=cfg.value("back.aspp_rates"), noise_dim=cfg.value("zs3_noise_dim"),
            gen_hidden=cfg.value("zs3_gen_hidden"), gen_dropout=cfg.value("zs3_gen_dropout"),
            noise=cfg.value("zs3_noise"), ignore_index=cfg.value("ignore_index"))

    @classmethod
    def from_config(cls, cfg, model: ZS3Net, splits, schedule, parallel=None,
                    precision: Optional[Precision] = None) -> "ZS3NetTrainer":
        """Optimizers for the active schedule. Stage 2 starts with a fresh generator (Xavier-uniform, biases
        0.01) and, with zs3_reset_classifier, a U[0, 1) classifier (ZS3's code); a resume then loads the
        checkpoint's weights over them."""
        if schedule.name not in STAGES:
            raise ValueError(f"method zs3net has no --schedule {schedule.name}; expected one of {', '.join(STAGES)}")
        stage = STAGES[schedule.name]
        if stage.kind == "classifier":
            model.gen.reset_parameters()
            if cfg.value("zs3_reset_classifier"):
                model.reset_classifier()
        max_iter = iter_max(cfg, schedule.name)
        back_opt, dis_opt, gen_opt = cfg["back_opt"], cfg["dis_opt"], cfg["gen_opt"]
        groups = model.param_groups()
        optimizers = {
            # CaGNet's step-1 backbone optimizer (groups 1x / 10x / 20x; the contextual group is empty)
            "back": backbone_optimizer(model, back_opt["OPTIMIZER"], learning_rate(cfg, "back", schedule.name),
                                       back_opt["WEIGHT_DECAY"], back_opt["MOMENTUM"],
                                       back_opt.value("lr_multipliers")),
            "dis": make_optimizer(dis_opt["OPTIMIZER"], [{"params": groups["dis"]}],
                                  learning_rate(cfg, "dis", schedule.name), dis_opt["weight_decay"],
                                  back_opt["MOMENTUM"]),
            "gen": make_optimizer(gen_opt["OPTIMIZER"], [{"params": groups["gen"]}],
                                  learning_rate(cfg, "gen", schedule.name), gen_opt["weight_decay"]),
        }
        schedulers = {}
        for net in ("dis", "gen", "back"):
            sched = cfg[f"{net}_scheduler"]
            schedulers[net] = build_scheduler(
                optimizers[net], sched["lr_policy"], init_lr=learning_rate(cfg, net, schedule.name),
                max_iter=max_iter, power=sched.value("power", 0.9), lr_decay_iter=sched.value("lr_decay_iter", 1),
                start_decay_iter=sched.value("start_decay_iter", 0), step_size=sched.value("step_size", 1),
                gamma=sched.value("gamma", 1.0))
        return cls(model, optimizers, schedulers, stage=stage, num_seen=splits.num_seen,
                   num_unseen=splits.num_unseen, unseen_rate=cfg["gen_unseen_rate"],
                   sigmas=cfg.value("zs3_mmd_sigmas"), mmd_samples=cfg.value("zs3_mmd_samples"),
                   percent=cfg.value("zs3_pseudo_label_percent"), schedule=schedule, parallel=parallel,
                   precision=precision)

    # ---- what the loop calls ----------------------------------------------------------------------------
    def phase(self, iteration: int) -> str:
        """Every iteration of a schedule is of one kind (CaGNet's mixed blocks do not apply): stage 1 is logged
        as step1, stage 2 as step2."""
        return "step1" if self.stage.kind == "segmentation" else "step2"

    def step(self, phase: str, batch) -> Optional[Dict[str, torch.Tensor]]:
        images, labels = batch
        labels = self.seen_only(labels)
        if self.stage.kind == "segmentation":
            return self.segmentation_step(images, labels)
        return self.classifier_step(images, labels)

    def seen_only(self, labels: torch.Tensor) -> torch.Tensor:
        """Train ids with every value outside the seen ids 0..S-1 set to ignore. The loader already writes unseen
        pixels as ignore; this makes the guarantee local: whatever a label map holds, no unseen id reaches a loss
        unless this trainer's own pseudo-labelling put it there."""
        return torch.where(labels < self.num_seen, labels, torch.full_like(labels, self.model.ignore_index))

    # ---- pseudo-labels ------------------------------------------------------------------------------------
    def pseudo_labels(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """labels (N, h, w) train ids at feature resolution -> with the top p% unseen pseudo-labels (test ids)."""
        return top_percent_labels(labels, logits, self.num_seen, self.num_unseen, self.percent,
                                  ignore_index=self.model.ignore_index)

    # ---- stage 1 (step1, st) ------------------------------------------------------------------------------
    def segmentation_step(self, images: torch.Tensor, labels: torch.Tensor) -> Optional[Dict[str, torch.Tensor]]:
        """Cross-entropy on the 4 MSC feature maps [x, x_0.5, x_0.75, max], averaged; backbone and classifier
        learn from it. None (skipped) when some pyramid map has no labelled pixel (CaGNet's rule); under `st` when
        the feature-resolution map has no seen pixel before pseudo-labelling (CaGNet's st rule)."""
        model = self.model
        ignore = model.ignore_index
        if self.stage.pseudo_labels:
            y = nearest_resize(labels, model.feature_shape(*images.shape[-2:]))
            if not bool((y != ignore).any()):
                return None
            model.eval()
            with torch.no_grad(), self.precision.autocast():
                logits = model.predict(images)
            labels = self.pseudo_labels(y, logits.float())
        label_maps = model.pyramid_labels(labels, images.shape[-2:])
        if not all(bool((y != ignore).any()) for y in label_maps):
            return None
        model.train()
        with self.precision.autocast():
            terms = []
            for feat, y in zip(model.pyramid(images), label_maps):
                y = y.reshape(-1)
                keep = y != ignore
                terms.append(classification_loss(model.logits(to_pixels(feat)[keep]), y[keep], ignore))
            loss = sum(t[0] for t in terms) / len(terms)
            accuracy = sum(t[1] for t in terms) / len(terms)
        self.backward("dis", loss)
        self.backward("back", loss, retain=False)
        self.update("dis")
        self.update("back")
        self.precision.end_iteration()
        return {"cls_real": loss.detach(), "acc_real": accuracy}

    # ---- stage 2 (mixed, st_mixed) ------------------------------------------------------------------------
    def real_features(self, images: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The frozen backbone's features x (N, F, h, w) (eval mode, no graph) and the labels (N, h, w) at that
        resolution: train ids, with ZS3Net+ST pseudo-labels under st_mixed."""
        model = self.model
        model.eval()
        with torch.no_grad(), self.precision.autocast():
            x = model.features(images)
            logits = model.logit_maps(x) if self.stage.pseudo_labels else None
        x = x.float()
        y = nearest_resize(labels, tuple(x.shape[-2:]))
        if logits is not None:
            y = self.pseudo_labels(y, logits.float())
        return x, y

    def generator_steps(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[int, torch.Tensor]:
        """ZS3's GMMN training (train_pascal_GMMN.py:201-242): for each image and each seen class c in its labels
        (ascending ids), mmd_samples pixels of c drawn with replacement, as many fakes G(e_c, z), and one Adam
        step on the GMMN loss between them. Returns (steps taken, mean loss). Unseen (pseudo-)labels never train
        the generator."""
        model = self.model
        model.gen.train()
        steps, total = 0, x.new_zeros(())
        for n in range(x.shape[0]):
            pixels = to_pixels(x[n:n + 1])
            yn = y[n].reshape(-1)
            for cls in torch.unique(yn[yn < self.num_seen]).tolist():
                rows = (yn == cls).nonzero().squeeze(1)
                draw = torch.randint(rows.numel(), (self.mmd_samples,), device=rows.device)
                real = pixels[rows[draw]]
                ids = torch.full((self.mmd_samples,), cls, dtype=torch.long, device=x.device)
                with self.precision.autocast():
                    loss = gmmn_mmd_loss(model.generate(ids), real, self.sigmas)
                self.backward("gen", loss, retain=False)
                self.update("gen", scheduler_step=False)
                # each generator step is an optimizer step of its own for fp16's gradient scaler
                self.precision.end_iteration()
                steps += 1
                total = total + loss.detach()
        return steps, total / max(steps, 1)

    def classifier_batch(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, int]:
        """Features (P, F) and test ids (P,) of one classifier step: the real features at every labelled pixel
        (seen train ids, plus pseudo-labelled unseen ids under st_mixed), then n_u generated features (no graph,
        generator in train mode as in its MMD training) per unseen class, n_u = `unseen_count` of the V seen
        pixels. Returns (features, labels, n_u)."""
        model = self.model
        yv = y.reshape(-1)
        keep = yv != model.ignore_index
        real, labels = to_pixels(x)[keep], yv[keep].long()
        visible = int((labels < self.num_seen).sum())
        n_u = unseen_count(visible, self.num_seen, self.unseen_rate)
        ids = torch.arange(self.num_seen, self.num_seen + self.num_unseen, device=x.device).repeat_interleave(n_u)
        model.gen.train()
        with torch.no_grad(), self.precision.autocast():
            fake = model.generate(ids).float()
        return torch.cat([real, fake]), torch.cat([labels, ids]), n_u

    def classifier_step(self, images: torch.Tensor, labels: torch.Tensor) -> Optional[Dict[str, torch.Tensor]]:
        """(a) the generator steps, then (b) one plain cross-entropy step of the classifier. The backbone stays
        frozen (eval mode, no gradient, its optimizer never steps). None (skipped) without a seen pixel."""
        x, y = self.real_features(images, labels)
        if not bool((y < self.num_seen).any()):
            return None
        steps, mmd = self.generator_steps(x, y)
        self.schedulers["gen"].step()
        feats, targets, n_u = self.classifier_batch(x, y)
        self.model.cls.train()
        with self.precision.autocast():
            loss, accuracy = classification_loss(self.model.logits(feats), targets, self.model.ignore_index)
        self.backward("dis", loss, retain=False)
        self.update("dis")
        self.precision.end_iteration()
        return {"mmd": mmd, "gen_steps": torch.tensor(float(steps)), "cls_mixed": loss.detach(),
                "acc_mixed": accuracy, "n_unseen": torch.tensor(float(n_u))}
