"""SPNet's training (baselines-spec §1.2, docs/baselines.md): cross-entropy on the seen classes' projected scores.

One iteration: the four MSC outputs [full, 0.5, 0.75, max] of the batch over the S seen classes, each scored
against the train label resized (nearest) to its size; loss = the SUM of the four mean cross-entropies (SPNet
train.py:369-374; CaGNet averages them), ignore index = unseen / background / void. With ITER_SIZE > 1 the loaded
batch of BATCH_SIZE.TRAIN x ITER_SIZE images is back-propagated in ITER_SIZE chunks of BATCH_SIZE.TRAIN images,
each chunk's loss divided by ITER_SIZE (SPNet's gradient accumulation), then one SGD step.

Several processes (docs/method.md §8.6): the model draws no random numbers, so one all-gather of the per-process
labelled-pixel counts per output is enough: each process divides its summed cross-entropy by the global count,
and the gradients summed over the processes are the one-process gradients. Gradient accumulation and several
processes together are refused (the accumulated chunks would have to be split across processes too).
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from libs.config import iter_max, learning_rate
from libs.datasets import build_embedding_tables, load_word_embeddings
from libs.engine.precision import Precision
from libs.engine.trainers.base import Trainer
from libs.optimizers import make_optimizer
from libs.schedulers import build_scheduler
from models.ops import nearest_resize
from models.spnet import SPNet, build_spnet

# (group, index into back_opt.lr_multipliers, weight decay applies): SPNet train.py get_params: ResNet convs 1x
# with decay, ASPP weights 10x with decay, ASPP biases 20x without. lr_multipliers' second entry (CaGNet's
# contextual module) is unused.
SPNET_GROUPS = (("resnet", 0, True), ("aspp_weight", 2, True), ("aspp_bias", 3, False))


def spnet_optimizer(model: SPNet, kind: str, lr: float, weight_decay: float, momentum: float = 0.9,
                    multipliers=(1.0, 5.0, 10.0, 20.0)):
    params = model.param_groups()
    groups = [{"params": params[name], "lr": lr * multipliers[i], "lr_mult": multipliers[i],
               "weight_decay": weight_decay if decay else 0.0, "name": name} for name, i, decay in SPNET_GROUPS]
    return make_optimizer(kind, groups, lr, weight_decay, momentum)


def summed_cross_entropy(scores: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255):
    """(sum of the per-pixel cross-entropies over labelled pixels, number of correct argmaxes) of one output.
    scores (N, K, h, w), labels (N, h, w) train ids."""
    loss = F.cross_entropy(scores.float(), labels, ignore_index=ignore_index, reduction="sum")
    valid = labels != ignore_index
    correct = ((scores.detach().argmax(1) == labels) & valid).sum()
    return loss, correct


class SPNetTrainer(Trainer):
    """One network ("back": the whole DeepLab), one SGD optimizer, one poly scheduler."""

    networks = ("back",)
    schedules = ("step1",)      # one stage on the seen classes

    def __init__(self, model: SPNet, optimizers, schedulers, *, chunk_size: int, iter_size: int = 1,
                 parallel=None, precision: Optional[Precision] = None, schedule=None):
        if iter_size < 1:
            raise ValueError(f"ITER_SIZE must be >= 1, got {iter_size}")
        if iter_size > 1 and parallel is not None:
            raise ValueError(f"ITER_SIZE {iter_size} cannot run with several processes (torchrun): set "
                             f"BATCH_SIZE.TRAIN to {chunk_size * iter_size} and ITER_SIZE to 1 (the same effective "
                             "batch, the cross-entropy then averaged over the whole batch instead of per chunk)")
        params = {"back": [p for group in optimizers["back"].param_groups for p in group["params"]]}
        super().__init__(model, optimizers, schedulers, params, schedule=schedule, parallel=parallel,
                         precision=precision)
        self.chunk_size = int(chunk_size)
        self.iter_size = int(iter_size)

    # ---- built from a config ----------------------------------------------------------------------------
    @classmethod
    def build_model(cls, cfg, splits) -> SPNet:
        """Embedding tables from the word-vector files (the same as CaGNet's), ASPP width = embedding dim."""
        embeddings = load_word_embeddings(cfg["datadir"], cfg["dataset"], cfg["embedding"],
                                          cfg["emb_without_normal"])
        em_vis, em_all = build_embedding_tables(embeddings, splits, expected_dim=cfg.value("back.n_classes"))
        return build_spnet(em_vis, em_all, splits.num_seen, n_blocks=cfg.value("back.n_blocks"),
                           base_width=cfg.value("back.base_width"), atrous_rates=cfg.value("back.aspp_rates"),
                           ignore_index=cfg.value("ignore_index"))

    @classmethod
    def stream_batch_size(cls, cfg) -> int:
        return cfg.value("BATCH_SIZE.TRAIN") * cfg.value("ITER_SIZE", 1)

    @classmethod
    def from_config(cls, cfg, model: SPNet, splits, schedule, parallel=None,
                    precision: Optional[Precision] = None) -> "SPNetTrainer":
        if schedule.name != "step1":
            raise ValueError(f"method spnet trains with --schedule step1 only (one stage on the seen classes), not "
                             f"--schedule {schedule.name}")
        back_opt, sched = cfg["back_opt"], cfg["back_scheduler"]
        lr = learning_rate(cfg, "back", schedule.name)
        optimizer = spnet_optimizer(model, back_opt["OPTIMIZER"], lr, back_opt["WEIGHT_DECAY"],
                                    back_opt["MOMENTUM"], back_opt.value("lr_multipliers"))
        scheduler = build_scheduler(
            optimizer, sched["lr_policy"], init_lr=lr, max_iter=iter_max(cfg, schedule.name),
            power=sched.value("power", 0.9), lr_decay_iter=sched.value("lr_decay_iter", 1),
            start_decay_iter=sched.value("start_decay_iter", 0), step_size=sched.value("step_size", 1),
            gamma=sched.value("gamma", 1.0))
        return cls(model, {"back": optimizer}, {"back": scheduler}, chunk_size=cfg.value("BATCH_SIZE.TRAIN"),
                   iter_size=cfg.value("ITER_SIZE", 1), parallel=parallel, precision=precision, schedule=schedule)

    # ---- one iteration ------------------------------------------------------------------------------
    def output_labels(self, labels: torch.Tensor, scores: List[torch.Tensor]) -> List[torch.Tensor]:
        return [nearest_resize(labels, s.shape[-2:]) for s in scores]

    def label_counts(self, images: torch.Tensor, labels: torch.Tensor) -> List[int]:
        """Labelled pixels of each of the four outputs for this process's batch (sizes without a forward)."""
        model = self.model
        h, w = images.shape[-2:]
        sizes = [model.feature_shape(h, w)]
        sizes += [model.feature_shape(*model.back.scaled_size(h, w, p)) for p in model.back.pyramid_scales]
        sizes.append(sizes[0])
        return [int((nearest_resize(labels, size) != model.ignore_index).sum()) for size in sizes]

    def step(self, phase: str, batch) -> Optional[Dict[str, torch.Tensor]]:
        images, labels = batch
        return self.train_step(images, labels)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> Optional[Dict[str, torch.Tensor]]:
        """None (skipped, nothing changes) when an output has no labelled pixel in the (global) batch: its mean
        cross-entropy would be undefined (SPNet's would be NaN)."""
        model = self.model
        model.train()
        chunks = list(zip(torch.split(images, self.chunk_size), torch.split(labels, self.chunk_size)))
        counts = [self.label_counts(x, y) for x, y in chunks]
        totals = [sum(c[k] for c in counts) for k in range(4)]
        if self.parallel is not None:
            totals = [sum(col) for col in zip(*self.parallel.gather_ints(totals))]
        if any(t == 0 for t in totals):
            return None
        loss_sum = torch.zeros((), device=images.device)
        correct = [0.0] * 4
        for i, (x, y) in enumerate(chunks):
            # the divisor of a chunk's mean: its own count (ITER_SIZE chunks) or the global batch's (processes)
            denominators = totals if self.iter_size == 1 else counts[i]
            with self.precision.autocast():
                scores = model.train_scores(x)
                terms = [summed_cross_entropy(s, t, model.ignore_index)
                         for s, t in zip(scores, self.output_labels(y, scores))]
            loss = sum(term[0] / max(d, 1) for term, d in zip(terms, denominators)) / self.iter_size
            self.backward("back", loss, retain=False, accumulate=i > 0)
            loss_sum = loss_sum + loss.detach()
            correct = [c + term[1] for c, term in zip(correct, terms)]
        self.update("back")
        self.precision.end_iteration()
        values = {"cls_real": loss_sum}
        for name, c, total in zip(("full", "0.5", "0.75", "max"), correct, totals):
            values[f"acc_{name}"] = torch.as_tensor(c, dtype=torch.float64, device=images.device) / total
        return values if self.parallel is None else self.parallel.sum_values(values)
