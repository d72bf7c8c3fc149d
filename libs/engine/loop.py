"""The iteration-based training loop (design rule 5): `fit` on one screen, everything else behind named hooks.

An iteration is a successful (non-skipped) trainer step (docs/method.md §3.10). Everything the loop depends on is
restorable from a checkpoint: the iteration (hence the learning rates and the step-1/step-2 phase), the trainer's
state, the data stream's position and the RNG states.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict

import torch

# Faithful to the original: the learning rates are reported, and the running averages of the logged losses
# restart, at the first iteration of a run and every 1000 iterations (docs/method.md §3.11).
LR_REPORT_INTERVAL = 1000


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


class LoopHooks:
    """What `fit` reports to; the run implements these (logs, TensorBoard, progress bar, checkpoints, tests)."""

    def learning_rates(self, iteration: int, rates: Dict[str, float]) -> None: ...
    def progress(self, iteration: int) -> None: ...
    def losses(self, iteration: int, phase: str, means: Dict[str, float], to_log_file: bool) -> None: ...
    def snapshot(self, iteration: int) -> None: ...
    def test(self, iteration: int) -> None: ...


def fit(trainer, stream, hooks: LoopHooks, *, start: int, max_iter: int, snapshot: int, display_interval: int,
        log_interval: int, device: torch.device) -> None:
    """Run iterations start..max_iter-1; save and test every `snapshot` iterations and save the last one."""
    meters = defaultdict(RunningMeans)
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
        values = trainer.step(phase, batch)
        if values is None:      # no visible pixel at some scale: skipped, not counted (docs/method.md §3.10)
            continue
        meters[phase].add(values)
        it += 1
        hooks.progress(it)
        if it % display_interval == 0 or it % log_interval == 0:
            hooks.losses(it, phase, meters[phase].means(), to_log_file=it % log_interval == 0)
        if it % snapshot == 0:
            hooks.snapshot(it)
            hooks.test(it)
        elif it == max_iter:        # the run's last state is always kept; the test runs on the snapshots only
            hooks.snapshot(it)
