"""Learning-rate policies (docs/method.md §4.4) and the step1/step2 phase of the mixed schedules (§5.3).

Every scheduler is a plain object over a torch optimizer with one small interface:
``step()`` advances the iteration counter k by one and writes the new rates into the optimizer,
``lr_at(k)`` is the pure base rate at iteration k (group multiplier 1), ``group_lrs_at(k)`` the rate of
every param group, and ``state_dict()`` / ``load_state_dict()`` hold k so a resumed run continues
with exactly the rates it would have had. k counts completed ``step()`` calls, i.e. successful
training iterations; the rate in force during iteration k (0-based) is ``lr_at(k)``.

The original's lambda scheduler is rebuilt on resume with a counter that is off by one, and the
original saves no scheduler state at all (docs/method.md §9 D14). Storing k here fixes both: this is a
deliberate deviation that only affects resumed runs.

Group multipliers: the backbone optimizer's four groups run at 1x, 5x, 10x and 20x the base rate
(docs/method.md §4.2). They come from the ``multipliers`` argument if given, otherwise from each param group's own
``'lr_mult'`` entry (absent = 1), so the trainer can declare them where it builds the groups.
"""
from typing import List, Optional, Sequence

import torch

POLICIES = ("poly", "lambda", "step", "constant")
PHASES = ("step1", "step2")


class _Scheduler:
    """Shared machinery: k, group multipliers, writing rates into the optimizer."""

    def __init__(self, optimizer: torch.optim.Optimizer, init_lr: float,
                 multipliers: Optional[Sequence[float]] = None):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        init_lr = float(init_lr)
        if init_lr < 0:
            raise ValueError(f"init_lr must be >= 0, got {init_lr}")
        groups = optimizer.param_groups
        if multipliers is None:
            multipliers = [float(group.get("lr_mult", 1.0)) for group in groups]
        elif len(multipliers) != len(groups):
            raise ValueError(f"multipliers has {len(multipliers)} entries but the optimizer has "
                             f"{len(groups)} param groups")
        self.optimizer = optimizer
        self.init_lr = init_lr
        self.multipliers = [float(m) for m in multipliers]
        self.last_iter = 0
        self._apply()

    def lr_at(self, k: int) -> float:
        """Base learning rate (multiplier 1) in force after k completed steps."""
        if k < 0:
            raise ValueError(f"iteration must be >= 0, got {k}")
        return self.init_lr * self._factor(int(k))

    def _factor(self, k: int) -> float:
        raise NotImplementedError

    def group_lrs_at(self, k: int) -> List[float]:
        """Learning rate of every param group after k completed steps."""
        base = self.lr_at(k)
        return [base * m for m in self.multipliers]

    def get_last_lr(self) -> List[float]:
        """The rates currently written into the optimizer's groups (for logging)."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def _apply(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.group_lrs_at(self.last_iter)):
            group["lr"] = lr

    def step(self) -> None:
        """Count one completed training iteration and set the rates for the next one."""
        self.last_iter += 1
        self._apply()

    def state_dict(self) -> dict:
        return {"last_iter": self.last_iter}

    def load_state_dict(self, state: dict) -> None:
        """Restore k and write the matching rates, so the next step continues the original sequence."""
        last_iter = int(state["last_iter"])
        if last_iter < 0:
            raise ValueError(f"last_iter must be >= 0, got {last_iter}")
        self.last_iter = last_iter
        self._apply()


class PolyLR(_Scheduler):
    """Backbone 'poly' policy: lr(k) = init * (1 - k'/max_iter)^power.

    k' is the last multiple of ``lr_decay_iter`` that is <= k and < max_iter: the original only updates
    the rate at multiples of lr_decay_iter and stops updating once k reaches max_iter, so the rate is
    piecewise constant over blocks of lr_decay_iter iterations and never reaches 0.
    """

    def __init__(self, optimizer, init_lr: float, max_iter: int, power: float = 0.9, lr_decay_iter: int = 1,
                 multipliers: Optional[Sequence[float]] = None):
        if int(max_iter) <= 0:
            raise ValueError(f"max_iter must be a positive integer, got {max_iter}")
        if int(lr_decay_iter) <= 0:
            raise ValueError(f"lr_decay_iter must be a positive integer, got {lr_decay_iter}")
        self.max_iter = int(max_iter)
        self.power = float(power)
        self.lr_decay_iter = int(lr_decay_iter)
        super().__init__(optimizer, init_lr, multipliers)

    def _factor(self, k: int) -> float:
        k = min(k, self.max_iter - 1)
        k = k - k % self.lr_decay_iter
        return (1.0 - k / self.max_iter) ** self.power


class LambdaDecay(_Scheduler):
    """Discriminator/generator 'lambda' policy: f(k) = 1 if k < start_decay_iter, else
    gamma^(floor((k - start_decay_iter) / step_size) + 1)."""

    def __init__(self, optimizer, init_lr: float, start_decay_iter: int, step_size: int, gamma: float,
                 multipliers: Optional[Sequence[float]] = None):
        if int(step_size) <= 0:
            raise ValueError(f"step_size must be a positive integer, got {step_size}")
        if int(start_decay_iter) < 0:
            raise ValueError(f"start_decay_iter must be >= 0, got {start_decay_iter}")
        self.start_decay_iter = int(start_decay_iter)
        self.step_size = int(step_size)
        self.gamma = float(gamma)
        super().__init__(optimizer, init_lr, multipliers)

    def _factor(self, k: int) -> float:
        if k < self.start_decay_iter:
            return 1.0
        return self.gamma ** ((k - self.start_decay_iter) // self.step_size + 1)


class StepDecay(_Scheduler):
    """'step' policy with torch StepLR semantics: f(k) = gamma^floor(k / step_size)."""

    def __init__(self, optimizer, init_lr: float, step_size: int, gamma: float,
                 multipliers: Optional[Sequence[float]] = None):
        if int(step_size) <= 0:
            raise ValueError(f"step_size must be a positive integer, got {step_size}")
        self.step_size = int(step_size)
        self.gamma = float(gamma)
        super().__init__(optimizer, init_lr, multipliers)

    def _factor(self, k: int) -> float:
        return self.gamma ** (k // self.step_size)


class ConstantLR(_Scheduler):
    """'constant' policy: f(k) = 1."""

    def _factor(self, k: int) -> float:
        return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, policy: str, *, init_lr: float,
                    max_iter: Optional[int] = None, power: float = 0.9, lr_decay_iter: int = 1,
                    start_decay_iter: int = 0, step_size: int = 1, gamma: float = 1.0,
                    multipliers: Optional[Sequence[float]] = None) -> _Scheduler:
    """Scheduler for a config's ``lr_policy`` ('poly', 'lambda', 'step' or 'constant'); the other
    arguments are the matching ``*_scheduler`` config keys. 'poly' needs ``max_iter``."""
    if policy == "poly":
        if max_iter is None:
            raise ValueError("lr_policy 'poly' needs max_iter")
        return PolyLR(optimizer, init_lr, max_iter, power=power, lr_decay_iter=lr_decay_iter,
                      multipliers=multipliers)
    if policy == "lambda":
        return LambdaDecay(optimizer, init_lr, start_decay_iter, step_size, gamma, multipliers=multipliers)
    if policy == "step":
        return StepDecay(optimizer, init_lr, step_size, gamma, multipliers=multipliers)
    if policy == "constant":
        return ConstantLR(optimizer, init_lr, multipliers=multipliers)
    raise ValueError(f"lr_policy must be one of {POLICIES}, got {policy!r}")


def training_phase(count: int, interval_step1: int, interval_step2: int, first: str = "step1") -> str:
    """Phase of the mixed / st_mixed schedules for the ``count``-th successful iteration (0-based).

    Iterations alternate in blocks: ``interval_step1`` step-1 iterations, then ``interval_step2``
    step-2 iterations (or the mirror image when ``first == 'step2'``). Being a function of the
    counter alone, the phase is restored on resume by restoring the counter.
    """
    if first not in PHASES:
        raise ValueError(f"first must be one of {PHASES}, got {first!r}")
    interval_step1, interval_step2 = int(interval_step1), int(interval_step2)
    if interval_step1 < 0 or interval_step2 < 0 or interval_step1 + interval_step2 == 0:
        raise ValueError(f"interval_step1 and interval_step2 must be >= 0 with a positive sum, got "
                         f"{interval_step1} and {interval_step2}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    position = int(count) % (interval_step1 + interval_step2)
    if first == "step1":
        return "step1" if position < interval_step1 else "step2"
    return "step2" if position < interval_step2 else "step1"
