"""The iteration-based training loop (design rule 5): `fit` on one screen, everything else behind named hooks.

An iteration is a successful (non-skipped) trainer step (docs/method.md §3.10). Everything the loop depends on is
restorable from a checkpoint: the iteration (hence the learning rates and the step-1/step-2 phase), the trainer's
state, the data stream's position and the RNG states.

Two ways a run ends early (docs/method.md §8.8): a non-finite loss (`NonFiniteGuard`: the run stops, or with a
budget of skips the batch is skipped without an update), and a stop request (SIGINT/SIGTERM, `hooks.stop`) taken
at the next iteration boundary, where the run's state is saved so that a resume continues exactly.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Dict, Optional

import torch

from libs.io import log

# Faithful to the original: the learning rates are reported, and the running averages of the logged losses
# restart, at the first iteration of a run and every 1000 iterations (docs/method.md §3.11).
LR_REPORT_INTERVAL = 1000


class NonFiniteLoss(RuntimeError):
    """A logged loss is NaN or infinite: the run stops (train.py exits with status 3)."""


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


class NonFiniteGuard:
    """The check of one iteration's logged values (the losses the trainer computes anyway) before any update.

    One device-to-host sync of a few scalars per iteration. With several processes the values are the global
    ones (summed over the ranks, libs/engine/distributed.py:DataParallel.sum_values), so every rank reaches the
    same verdict without another collective. `budget` = how many such batches may be skipped (no update, the
    iteration does not advance) before the run stops anyway; 0 = stop at the first.
    """

    def __init__(self, budget: int = 0):
        self.checked = False    # whether the trainer called the guard during the current step
        self.budget = int(budget)
        self.skipped = 0
        self.iteration = 0      # the iteration being computed (1-based in messages), set by `fit`

    def __call__(self, values: Dict[str, torch.Tensor]) -> bool:
        """True = go on with the update; False = skip this batch. Raises NonFiniteLoss to stop the run."""
        self.checked = True
        keys = list(values)
        finite = torch.isfinite(torch.stack([values[k].detach().float().reshape(()) for k in keys]))
        if bool(finite.all()):
            return True
        bad = ", ".join(f"{k} {format_value(float(values[k]))}" for k, ok in zip(keys, finite.tolist()) if not ok)
        if self.skipped < self.budget:
            self.skipped += 1
            self.last = f"iteration {self.iteration + 1}: {bad}"
            log.warning("non-finite loss at iteration %d: %s; batch skipped without an update (%d of "
                        "--skip_nonfinite %d)", self.iteration + 1, bad, self.skipped, self.budget)
            return False
        hint = (f"skipped {self.skipped} such batch(es) before, the budget of --skip_nonfinite {self.budget} is spent"
                if self.budget else "lower the learning rate, or pass --skip_nonfinite N to skip up to N such batches")
        raise NonFiniteLoss(f"non-finite loss at iteration {self.iteration + 1}: {bad}; stopped without saving "
                            f"this iteration ({hint})")


def format_value(value: float) -> str:
    """A logged number; `nan`, `inf` and `-inf` written as such (never dropped)."""
    return f"{value:.4f}" if math.isfinite(value) else str(value)


class LoopHooks:
    """What `fit` reports to; the run implements these (logs, TensorBoard, progress bar, checkpoints, tests)."""

    def learning_rates(self, iteration: int, rates: Dict[str, float]) -> None: ...
    def progress(self, iteration: int) -> None: ...
    def losses(self, iteration: int, phase: str, means: Dict[str, float], to_log_file: bool) -> None: ...
    def snapshot(self, iteration: int) -> None: ...
    def test(self, iteration: int) -> None: ...
    def stop(self, iteration: int) -> bool: return False    # noqa: E704 - a stop requested (all ranks agree)


def fit(trainer, stream, hooks: LoopHooks, *, start: int, max_iter: int, snapshot: int, display_interval: int,
        log_interval: int, device: torch.device, guard: Optional[NonFiniteGuard] = None) -> Optional[int]:
    """Run iterations start..max_iter-1; save and test every `snapshot` iterations and save the last one.
    Returns None when max_iter is reached, or the iteration saved when a stop was requested (`hooks.stop`)."""
    meters = defaultdict(RunningMeans)
    guard = guard or NonFiniteGuard()
    trainer.nonfinite_guard = guard       # checked by the trainer after the forward, before any update
    it, reported = start, None
    while it < max_iter:
        if reported != it and (it == start or it % LR_REPORT_INTERVAL == 0):
            reported = it
            hooks.learning_rates(it, trainer.learning_rates())
            for meter in meters.values():
                meter.reset()
        phase = trainer.phase(it)
        batch = None
        if trainer.needs_batch(phase):
            batch = tuple(t.to(device, non_blocking=True) for t in stream.next())
        guard.iteration, guard.checked = it, False
        values = trainer.step(phase, batch)
        if values is not None and not guard.checked:
            # a trainer that does not call the guard before its updates (Trainer.checked_values): checked after the
            # update, so a non-finite loss stops the run (nothing to skip any more)
            NonFiniteGuard()(values)
        if values is None:      # no visible pixel at some scale, or a skipped non-finite loss: not counted (§3.10)
            if hooks.stop(it):
                return _stopped(hooks, it, start)
            continue
        meters[phase].add(values)
        it += 1
        hooks.progress(it)
        if it % display_interval == 0 or it % log_interval == 0:
            hooks.losses(it, phase, meters[phase].means(), to_log_file=it % log_interval == 0)
        saved = it % snapshot == 0 or it == max_iter    # the run's last state is always kept
        if saved:
            hooks.snapshot(it)
        if it % snapshot == 0:                          # the test runs on the snapshots only
            hooks.test(it)
        if it < max_iter and hooks.stop(it):
            return _stopped(hooks, it, start, saved)
    return None


def _stopped(hooks: LoopHooks, it: int, start: int, saved: bool = False) -> int:
    """Save the state at a stop request (unless this iteration's snapshot was just written, or nothing ran)."""
    if not saved and it > start:
        hooks.snapshot(it)
    return it
