"""The interface every method's trainer implements, and the gradient routing they share.

A trainer owns what one method needs to train: its optimizers and schedulers (one per trained network), the
state a resume needs beyond the weights (`state_dict`), and one `step(phase, batch)` per kind of iteration. The
loop (libs/engine/loop.py) only ever calls `phase`, `needs_batch`, `step` and `learning_rates`; the run
(libs/engine/run.py) calls the two class methods that turn a config into a model and a trainer, so nothing else
reads a method's config keys.

Gradient routing (docs/method.md §3.8): each network learns from its own loss only. `backward` limits a backward
pass to one network's parameters (`inputs=`), so no pass walks a part of the graph whose gradients would be thrown
away, and `update` is the one place a network's optimizer steps: when several processes train together it first
waits for the sum of the gradients over the processes, whose all-reduces the backward pass has started
(libs/engine/distributed.py). Mixed precision (libs/engine/precision.py) scales the losses before backward and
unscales at the step when it uses a gradient scaler.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from libs.engine.precision import Precision
from libs.engine.schedules import Schedule
from libs.schedulers import training_phase


class Trainer:
    """Base class. `params[net]` lists the parameters that `optimizers[net]` updates, in stepping order."""

    def __init__(self, model: nn.Module, optimizers: Dict[str, torch.optim.Optimizer], schedulers: Dict[str, object],
                 params: Dict[str, List[nn.Parameter]], *, schedule: Optional[Schedule] = None,
                 intervals: Optional[Sequence] = None, parallel=None, precision: Optional[Precision] = None):
        self.model = model
        self.optimizers = optimizers
        self.schedulers = schedulers
        self.params = params
        self.schedule = schedule
        self.intervals = tuple(intervals) if intervals is not None else None
        # the collectives of data-parallel training (libs/engine/distributed.py:DataParallel), or None
        self.parallel = parallel
        if parallel is not None:
            parallel.watch(params, model)
        self.precision = precision or Precision()

    # ---- built from a config (the only readers of a method's keys) ----------------------------------------
    @classmethod
    def build_model(cls, cfg, splits) -> nn.Module:
        """The method's model, with explicit constructor arguments taken from the config."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, cfg, model: nn.Module, splits, schedule: Schedule, parallel=None,
                    precision: Optional[Precision] = None) -> "Trainer":
        """Optimizers with the schedule's learning rates, schedulers and loss weights for `model`."""
        raise NotImplementedError

    # networks whose `<net>_opt.lr*` keys a schedule reads
    networks: Sequence[str] = ()
    # set by the loop (libs/engine/loop.py:NonFiniteGuard): sees an iteration's global logged values after the
    # forward pass and before any update; False = skip the batch (docs/method.md §8.8)
    nonfinite_guard: Optional[Callable[[Dict[str, torch.Tensor]], bool]] = None
    # the --schedule values the method trains with (None: every schedule of libs/engine/schedules.py)
    schedules: Optional[Sequence[str]] = None

    @classmethod
    def stream_batch_size(cls, cfg) -> int:
        """Images per training iteration loaded from the stream (a method with gradient accumulation loads more)."""
        return cfg.value("BATCH_SIZE.TRAIN")

    # ---- what the loop calls --------------------------------------------------------------------------------
    def phase(self, iteration: int) -> str:
        """Kind of the iteration-th successful iteration: step-1/step-2 blocks for alternating schedules."""
        if self.schedule is not None and self.schedule.alternates:
            return training_phase(iteration, *self.intervals)
        return "step1"

    def needs_batch(self, phase: str) -> bool:
        return True

    def step(self, phase: str, batch) -> Optional[Dict[str, torch.Tensor]]:
        """One iteration; returns the values to log, or None when the batch was skipped (nothing changed)."""
        raise NotImplementedError

    def learning_rates(self) -> Dict[str, float]:
        """Current base rate (first parameter group) per network, in the log's order."""
        return {name: sched.optimizer.param_groups[0]["lr"] for name, sched in self.schedulers.items()}

    def checked_values(self, values: Dict[str, torch.Tensor]) -> Optional[Dict[str, torch.Tensor]]:
        """The iteration's logged values, summed over the processes (each holds its share of the global means),
        or None when the non-finite guard skips the batch; call it before the first backward pass."""
        if self.parallel is not None:
            values = self.parallel.sum_values(values)
        if self.nonfinite_guard is not None and not self.nonfinite_guard(values):
            return None
        return values

    # ---- gradients and updates ------------------------------------------------------------------------------
    def backward(self, net: str, loss: torch.Tensor, retain: bool = True, accumulate: bool = False) -> None:
        """Gradients of `loss` for one network's parameters only; other networks' .grad stay untouched.
        accumulate: add to the network's gradients of an earlier backward of this iteration (one process only)."""
        if accumulate:
            if self.parallel is not None:
                raise ValueError("gradient accumulation cannot run with several processes")
            if loss.requires_grad:
                self.precision.backward(loss, self.params[net], retain)
            return
        for p in self.params[net]:
            p.grad = None
        if self.parallel is not None:
            self.parallel.before_backward(net)
        if loss.requires_grad:
            self.precision.backward(loss, self.params[net], retain)
        for p in self.params[net]:
            if p.grad is None:
                # Faithful to the original: a network whose loss is identically 0 still steps with zero
                # gradients, so Adam keeps moving it with its stored moments (docs/method.md §3.9).
                p.grad = torch.zeros_like(p)

    def update(self, net: str, scheduler_step: bool = True) -> None:
        """Sum the gradients over processes, step the network's optimizer, then (normally) its scheduler."""
        if self.parallel is not None:
            self.parallel.sync(net)
        self.precision.step(self.optimizers[net])
        if scheduler_step:
            self.schedulers[net].step()

    # ---- state ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
                "precision": self.precision.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for k, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][k])
        self.precision.load_state_dict(state.get("precision", {"mode": "off"}))

    def restart_schedules_at(self, iteration: int) -> None:
        """Resume from a weights-only checkpoint (the original's format): learning rates continue at the right
        position (the original was off by one here); optimizer moments restart, as in the original."""
        for sched in self.schedulers.values():
            sched.load_state_dict({"last_iter": iteration})
