"""A process's rows of a global batch, and the random draws of a training step made over the global batch.

Several processes that train on one global batch (libs/engine/distributed.py) must compute what one process
computes on it (docs/method.md §8.6). Every per-sample and per-pixel random draw (the contextual module's noise,
the dropout masks of the generator and the classifier, step 2's sampled labels and noise codes, the gradient
penalty's mixing weights) is therefore made *for the whole global batch* from a generator that every process keeps
in the same state, and each process keeps only its own rows. So a pixel's draw depends on its position in the
global batch, never on the process that holds it, and one process (rows = None) draws exactly what it drew before
this module existed: the same calls on the same shapes.

The price is that each of N processes generates the random numbers of the whole global batch (N times the draws
of its share; the compute that uses them is not repeated). tools/benchmark.py measures it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Rows:
    """This process holds rows [offset, offset + count) of a global tensor with `total` rows (images or pixels)."""
    offset: int
    count: int
    total: int

    def __post_init__(self):
        if not 0 <= self.offset <= self.offset + self.count <= self.total:
            raise ValueError(f"Rows: [{self.offset}, {self.offset + self.count}) is not inside [0, {self.total})")

    @property
    def share(self) -> float:
        """count / total: the weight that turns a mean over these rows into their part of the global mean."""
        return self.count / self.total if self.total else 0.0

    def take(self, full: torch.Tensor) -> torch.Tensor:
        return full[self.offset:self.offset + self.count]

    @staticmethod
    def split(counts: Sequence[int], rank: int) -> "Rows":
        """The rows of `rank` when the processes hold counts[0], counts[1], ... consecutive rows in rank order."""
        return Rows(int(sum(counts[:rank])), int(counts[rank]), int(sum(counts)))


@dataclass(frozen=True)
class BatchShard:
    """This process's part of one global step-1 batch: its images, and its visible pixels of every pyramid map
    [full, 0.5, 0.75, max] (pixel matrices in raster order, so the global matrix is the ranks' matrices in rank
    order)."""
    images: Rows
    pixels: List[Rows]


def dropout(x: torch.Tensor, p: float, training: bool, rows: Optional[Rows] = None) -> torch.Tensor:
    """F.dropout, or with `rows` this process's rows of the dropout of the global matrix: the mask is drawn for
    (rows.total, ...) exactly as F.dropout draws it for a tensor of that shape, then sliced."""
    if rows is None or not training or p == 0:
        return F.dropout(x, p, training)
    if x.shape[0] != rows.count:
        raise ValueError(f"dropout: {x.shape[0]} rows given for a shard of {rows.count}")
    mask = F.dropout(torch.ones((rows.total, *x.shape[1:]), dtype=x.dtype, device=x.device), p, True)
    return x * rows.take(mask)


def randn(shape: Sequence[int], rows: Optional[Rows], *, dtype=torch.float32, device=None,
          generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Standard normal noise of `shape`; with `rows`, shape[0] is this process's count of rows.total."""
    if rows is None:
        return torch.randn(tuple(shape), dtype=dtype, device=device, generator=generator)
    return rows.take(torch.randn((rows.total, *shape[1:]), dtype=dtype, device=device, generator=generator))


def rand(count: int, rows: Optional[Rows], *, dtype=torch.float32, device=None,
         generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Uniform [0, 1) values, one per row."""
    if rows is None:
        return torch.rand(count, dtype=dtype, device=device, generator=generator)
    return rows.take(torch.rand(rows.total, dtype=dtype, device=device, generator=generator))


def multinomial(prior: torch.Tensor, count: int, rows: Optional[Rows],
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Class ids drawn i.i.d. (with replacement) from the unnormalised prior, one per row."""
    if rows is None:
        return torch.multinomial(prior, count, replacement=True, generator=generator)
    return rows.take(torch.multinomial(prior, rows.total, replacement=True, generator=generator))
