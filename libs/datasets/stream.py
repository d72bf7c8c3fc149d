"""The endless, resumable stream of training batches (iteration-based training, design rule 5).

A fresh permutation each epoch (`EpochPermutationSampler`), resumable at any (epoch, position): a resumed run
sees exactly the remaining items of the interrupted epoch in the same order. With several processes each rank
reads its own interleaved share of every epoch.
"""
from __future__ import annotations

import torch

from libs.datasets.sampler import EpochPermutationSampler


class BatchStream:
    """Batches of `dataset` for ever; `state_dict` / `load_state_dict` give and restore the position."""

    def __init__(self, dataset, batch_size: int, num_workers: int, seed: int, pin_memory: bool = False,
                 rank: int = 0, world_size: int = 1):
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.sampler = ShardedSampler(len(dataset), seed, rank, world_size)
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
        """(images (N, 3, crop, crop), train-id labels (N, crop, crop)) on the CPU."""
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


class ShardedSampler(EpochPermutationSampler):
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
