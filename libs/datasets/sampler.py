"""A resumable random-permutation sampler for iteration-based training.

The original draws `np.random.permutation` from numpy's global RNG each epoch, which cannot be replayed after a
restart. Here the permutation of epoch e is a pure function of (seed, e), and `start` skips the items an
interrupted epoch already consumed, so a resumed run sees exactly the remaining items in the same order.
"""
from typing import Iterator

import numpy as np
import torch


class EpochPermutationSampler(torch.utils.data.Sampler):
    """Yields `default_rng([seed, epoch]).permutation(num_items)[start:]` as Python ints.

    Call `set_epoch(epoch, start)` before iterating; a new epoch gives a new permutation.
    """

    def __init__(self, num_items: int, seed: int = 0):
        if int(num_items) <= 0:
            raise ValueError(f"EpochPermutationSampler: num_items must be positive, got {num_items}")
        if int(seed) < 0:
            raise ValueError(f"EpochPermutationSampler: seed must be >= 0 (numpy SeedSequence), got {seed}")
        self.num_items = int(num_items)
        self.seed = int(seed)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the permutation of `epoch` and skip its first `start` items (0 <= start <= num_items)."""
        if int(epoch) < 0:
            raise ValueError(f"EpochPermutationSampler.set_epoch: epoch must be >= 0, got {epoch}")
        if not 0 <= int(start) <= self.num_items:
            raise ValueError(f"EpochPermutationSampler.set_epoch: start must be in 0..{self.num_items}, got {start}")
        self.epoch = int(epoch)
        self.start = int(start)

    def permutation(self) -> np.ndarray:
        """int64 (num_items,): the full permutation of the current epoch."""
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.num_items)

    def __iter__(self) -> Iterator[int]:
        return iter(self.permutation()[self.start:].tolist())

    def __len__(self) -> int:
        return self.num_items - self.start

    def __repr__(self) -> str:
        return (f"EpochPermutationSampler(num_items={self.num_items}, seed={self.seed}, epoch={self.epoch}, "
                f"start={self.start})")
