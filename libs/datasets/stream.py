"""The endless, resumable stream of training batches (iteration-based training, design rule 5).

A fresh permutation each epoch (`EpochPermutationSampler`), cut into global batches of `batch_size` (no
drop_last: an epoch's last batch can be smaller, as in the original), resumable at any (epoch, position): a
resumed run sees exactly the remaining batches of the interrupted epoch in the same order.

With several processes `batch_size` is the global batch (the original's DataParallel split one batch over its
GPUs): each rank loads a consecutive part of every global batch (`GlobalBatches`), so the ranks' parts in rank
order are the one-process batch in its order, and (epoch, position) count global items, the same on every rank.
Augmentation is drawn per (seed, epoch, image index) by the dataset, so an image is augmented the same whichever
rank loads it.

The loaders draw nothing from the global torch RNG (their worker seeds come from their own generator), so the
training's random numbers do not depend on when an epoch starts or a resume creates a loader
(docs/method.md §8.5).
"""
from __future__ import annotations

import signal
from typing import Iterator, List

import torch

from libs.datasets.sampler import EpochPermutationSampler


def rank_share(count: int, rank: int, world_size: int) -> range:
    """Positions [a, b) of `rank`'s consecutive part of `count` items: equal parts, the first count % world_size
    ranks one more (a rank's part is empty when count < world_size)."""
    base, extra = divmod(count, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


class GlobalBatches(torch.utils.data.Sampler):
    """Batch sampler: this rank's part of each global batch of the epoch permutation, from `start` on; only
    non-empty parts are yielded (`BatchStream` knows where the empty ones fall)."""

    def __init__(self, sampler: EpochPermutationSampler, batch_size: int, rank: int = 0, world_size: int = 1):
        self.sampler, self.batch_size = sampler, int(batch_size)
        self.rank, self.world_size = int(rank), int(world_size)

    def global_batches(self) -> Iterator[List[int]]:
        items = list(self.sampler)
        for i in range(0, len(items), self.batch_size):
            yield items[i:i + self.batch_size]

    def local(self, batch: List[int]) -> List[int]:
        return [batch[i] for i in rank_share(len(batch), self.rank, self.world_size)]

    def __iter__(self):
        for batch in self.global_batches():
            part = self.local(batch)
            if part:
                yield part

    def __len__(self) -> int:
        return sum(1 for batch in self.global_batches() if self.local(batch))


def _ignore_interrupts(_worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the main process, which saves a checkpoint before it stops (a worker killed by
    the terminal's SIGINT would make the next batch fail)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class BatchStream:
    """Batches of `dataset` for ever; `state_dict` / `load_state_dict` give and restore the position."""

    def __init__(self, dataset, batch_size: int, num_workers: int, seed: int, pin_memory: bool = False,
                 rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ValueError(f"BATCH_SIZE.TRAIN {batch_size} cannot be split over {world_size} processes: it is the "
                             f"global batch and must be a multiple of the number of processes (torchrun "
                             f"--nproc_per_node)")
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        self.sampler = EpochPermutationSampler(len(dataset), seed)
        self.batches = GlobalBatches(self.sampler, batch_size, rank, world_size)
        self.epoch, self.position = 0, 0   # position = items of this epoch already handed out (all ranks)
        self._iterator = None

    def _start_epoch(self):
        self.sampler.set_epoch(self.epoch, self.position)
        self.dataset.set_epoch(self.epoch)
        # Faithful to the original: no drop_last, the last batch of an epoch can be smaller.
        # Own generator: creating the loader's iterator draws its workers' base seed from it, not from the
        # global torch RNG (whose stream the training steps use).
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=self.batches, num_workers=self.num_workers,
                                             pin_memory=self.pin_memory, generator=generator,
                                             worker_init_fn=_ignore_interrupts if self.num_workers else None)
        self._iterator = iter(loader)
        self._global = self.batches.global_batches()

    def next(self):
        """This rank's part (n, 3, crop, crop), (n, crop, crop) of the next global batch, on the CPU; n can be 0
        with several processes (an epoch's last batch smaller than the number of processes)."""
        if self._iterator is None:
            self._start_epoch()
        batch = next(self._global, None)
        if batch is None:
            self.epoch, self.position = self.epoch + 1, 0
            self._start_epoch()
            batch = next(self._global)
        self.position += len(batch)
        if not self.batches.local(batch):
            crop = self.dataset.crop_size
            return torch.zeros(0, 3, crop, crop), torch.zeros(0, crop, crop, dtype=torch.int64)
        return next(self._iterator)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._iterator = None
