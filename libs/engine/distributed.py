"""Processes and devices: the process group under torchrun, gradient averaging, and the device of each process.

One process per GPU (`torchrun --nproc_per_node N train.py ... --multigpus --ngpu N`); each rank reads its own
share of every epoch (libs/datasets/stream.py) and the gradients are averaged before every optimizer step
(`Trainer.update`), as DistributedDataParallel does. Rank 0 writes checkpoints and logs; evaluation is sharded:
every rank scores its share of the test set (`shard`) and the confusion matrices are summed (`all_reduce_sum`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class Processes:
    """rank / world_size of this process; local_rank: its CUDA device index, None on the CPU or single-process."""
    rank: int = 0
    world_size: int = 1
    local_rank: Optional[int] = None
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def grad_sync(self, params) -> None:
        """Average gradients over processes, as DistributedDataParallel does, in one flat all-reduce."""
        import torch.distributed as dist
        grads = [p.grad for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def shard(self, num_items: int) -> list:
        """This process's share of items 0..num_items-1 for evaluation: every world_size-th item from its rank.
        The shares are disjoint and cover every item once (no padding, no duplicates, unlike
        DistributedSampler), so summed confusion matrices equal one process's."""
        return list(range(self.rank, int(num_items), self.world_size))

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the processes, in place (a no-op for a single process); returns it."""
        if self.enabled:
            import torch.distributed as dist
            dist.all_reduce(tensor)
        return tensor

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist
            dist.destroy_process_group()


def start_processes(multigpus: bool, ngpu: int, device: str) -> Processes:
    """The process group for --multigpus (started by torchrun), or the single process."""
    if not multigpus:
        return Processes()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ValueError("--multigpus runs one process per GPU: start it with "
                         "`torchrun --nproc_per_node N train.py ... --multigpus --ngpu N`")
    import torch.distributed as dist
    world = int(os.environ["WORLD_SIZE"])
    if ngpu > 1 and ngpu != world:
        raise ValueError(f"--ngpu {ngpu} but torchrun started {world} processes; they must agree")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return Processes(dist.get_rank(), world, local_rank if use_cuda else None, enabled=True)


def select_device(device: str, processes: Processes, ngpu: int = 0) -> torch.device:
    """--device auto|cpu|cuda: auto = CUDA if available. The CUDA index is the local rank under torchrun, else
    --ngpu (the original's GPU id flag)."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available on this machine; use --device cpu")
    index = processes.local_rank if processes.local_rank is not None else ngpu
    if index >= torch.cuda.device_count():
        raise ValueError(f"--ngpu {index}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    torch.backends.cudnn.benchmark = True
    return torch.device("cuda", index)
