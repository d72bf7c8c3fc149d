"""The iteration-based training loop and what makes it resumable (design rule 5).

Everything the loop depends on is restorable from a checkpoint: the iteration (hence the learning rates and
the step-1/step-2 phase), the data stream's epoch and position, the RNG states and the last batch's shape.
"""
from __future__ import annotations

import logging
import math
import random
from collections import defaultdict
from typing import Callable, Dict, Optional

import numpy as np
import torch

from libs.datasets import EpochPermutationSampler
from libs.schedulers import training_phase

log = logging.getLogger("cagnet")


class BatchStream:
    """Endless training batches: a fresh permutation each epoch, resumable at any (epoch, position).

    With several processes (multi-GPU) each rank reads its own interleaved share of every epoch.
    """

    def __init__(self, dataset, batch_size: int, num_workers: int, seed: int, pin_memory: bool = False,
                 rank: int = 0, world_size: int = 1):
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.sampler = _ShardedSampler(len(dataset), seed, rank, world_size)
        self.epoch, self.position = 0, 0   # position = items of this epoch already handed out (this rank)
        self._iterator = None

    def _start_epoch(self):
        self.sampler.set_epoch(self.epoch, self.position)
        self.dataset.set_epoch(self.epoch)
        # Faithful to the original: no drop_last, the last batch of an epoch can be smaller.
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=self.batch_size, sampler=self.sampler,
                                             num_workers=self.num_workers, pin_memory=self.pin_memory)
        self._iterator = iter(loader)

    def next(self):
        if self._iterator is None:
            self._start_epoch()
        try:
            images, labels = next(self._iterator)
        except StopIteration:
            self.epoch, self.position = self.epoch + 1, 0
            self._start_epoch()
            images, labels = next(self._iterator)
        self.position += images.shape[0]
        return images, labels

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._iterator = None


class _ShardedSampler(EpochPermutationSampler):
    """The epoch permutation, this rank's interleaved share of it, skipping what was already consumed."""

    def __init__(self, num_items, seed, rank, world_size):
        super().__init__(num_items, seed)
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start)

    def __iter__(self):
        return iter(self.permutation()[self.rank::self.world_size][self.start:].tolist())

    def __len__(self):
        return len(range(self.rank, self.num_items, self.world_size)) - self.start


class RunningMeans:
    """Running averages of logged scalars, kept as device tensors so logging does not sync every step."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.sums: Dict[str, torch.Tensor] = {}
        self.counts: Dict[str, int] = defaultdict(int)

    def add(self, values: Dict[str, torch.Tensor]):
        for key, value in values.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value
            self.counts[key] += 1

    def means(self) -> Dict[str, float]:
        return {k: (v / self.counts[k]).item() for k, v in self.sums.items()}


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit(trainer, stream: BatchStream, *, schedule: str, start: int, max_iter: int, intervals, device,
        num_pixels: Optional[int], save: Callable[[int, Optional[int]], None], evaluate: Callable[[int], None],
        snapshot: int, display_interval: int, log_interval: int, writer=None, progress=None) -> None:
    """Run iterations start..max_iter-1. An iteration is a successful (non-skipped) train call (spec §5).

    intervals: (interval_step1, interval_step2, first) for mixed schedules, None otherwise.
    num_pixels: N*h*w of the last step-1 batch (step 2 generates that many pixels); None before any batch.
    save(iteration, num_pixels) writes a checkpoint; evaluate(iteration) runs the test set.
    """
    meters = {"step1": RunningMeans(), "step2": RunningMeans()}
    bar = progress(total=max_iter, initial=start) if progress else None
    it, reported = start, None
    while it < max_iter:
        phase = training_phase(it, *intervals) if intervals else "step1"
        if reported != it and (it == start or it % 1000 == 0):
            reported = it
            lrs = {k: s.optimizer.param_groups[0]["lr"] for k, s in trainer.schedulers.items()}
            log.info("iteration %d: lr dis %.3g, gen %.3g, back %.3g", it, lrs["dis"], lrs["gen"], lrs["back"])
            for m in meters.values():
                m.reset()
        if phase == "step2":
            if num_pixels is None:
                raise ValueError("first: step2 cannot start a schedule: step 2 takes its feature-map size from "
                                 "the last step-1 batch, and none has been loaded yet; use first: step1")
            values = trainer.step2(num_pixels)
        else:
            images, labels = stream.next()
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            step = trainer.self_training_step if schedule == "st" else trainer.step1
            values = step(images, labels)
            if values is None:      # no visible pixel at some scale: skipped, not counted (spec §3.4)
                continue
            h, w = trainer.model.feature_shape(*images.shape[-2:])
            num_pixels = images.shape[0] * h * w
        meters[phase].add(values)
        it += 1
        if bar:
            bar.update(1)
        if it % display_interval == 0 or it % log_interval == 0:
            means = meters[phase].means()
            line = f"[{schedule} {phase}] iter {it}/{max_iter} " + " ".join(
                f"{k} {v:.4f}" for k, v in means.items() if not math.isnan(v))
            if it % log_interval == 0:
                log.info(line)
            if bar:
                bar.set_postfix({k: f"{v:.3f}" for k, v in means.items() if k in ("cls_real", "cls_fake", "KLD")})
            if writer is not None:
                for k, v in means.items():
                    if not math.isnan(v):       # D_gp is NaN unless gan_type is wgan-gp
                        writer.add_scalar(f"{phase}/{k}", v, it)
                for name, sched in trainer.schedulers.items():
                    writer.add_scalar(f"lr/{name}", sched.optimizer.param_groups[0]["lr"], it)
        if it % snapshot == 0:
            save(it, num_pixels)
            evaluate(it)
        elif it == max_iter:        # the run's last state is always kept; the test run stays on the snapshots
            save(it, num_pixels)
    if bar:
        bar.close()
