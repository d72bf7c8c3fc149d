"""Optimizers by config name (`<net>_opt.OPTIMIZER`), with the original's settings (docs/method.md §4)."""
from typing import List

import torch

OPTIMIZERS = ("sgd", "adam", "rmsprop")


def make_optimizer(kind: str, groups: List[dict], lr: float, weight_decay: float, momentum: float = 0.9):
    """sgd (momentum, no Nesterov), adam (default betas; coupled L2 decay, not AdamW) or rmsprop."""
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if kind == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    if kind == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"OPTIMIZER must be one of {', '.join(OPTIMIZERS)}; got {kind!r}")
