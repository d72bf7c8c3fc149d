"""Processes and devices: the process group under torchrun, the collectives of data-parallel training, and the
device of each process.

One process per GPU (`torchrun --nproc_per_node N train.py ... --multigpus --ngpu N`). N processes compute what
one process computes on the same global batch (docs/method.md §8.6), as the original's DataParallel did:

* `BATCH_SIZE.TRAIN` is the global batch; each rank loads a consecutive share of it (libs/datasets/stream.py), so
  the ranks' samples in rank order are the one-process batch in its order.
* Every random draw of a step is made for the whole global batch from generators that all ranks keep in the same
  state, and each rank uses its rows (models/shard.py).
* Every loss is normalised globally: a rank's mean over its pixels is weighted by its share of the global count
  (one all-gather of the per-rank counts before the forward pass), and the gradients are *summed* over ranks.
  The same gather decides the "meaningless batch" skip for all ranks at once, so no rank can run a different
  number of collectives; the MMD's runs of equal labels that cross a rank boundary are completed with the
  neighbours' pixels (`exchange_boundary_runs`).
* Gradients are all-reduced in buckets that start as soon as their gradients are ready, while the backward pass
  goes on (`GradientBuckets`).

Rank 0 writes checkpoints and logs; evaluation is sharded: every rank scores its share of the test set (`shard`)
and the confusion matrices are summed (`all_reduce_sum`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

from libs.losses import BoundaryRuns, RunContext, RunSummary

# Bytes of gradients per all-reduce bucket (DistributedDataParallel's default): large enough that the per-call
# latency is small against the transfer, small enough that the first buckets start early in the backward pass.
BUCKET_BYTES = 25 * 2 ** 20


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

    def data_parallel(self, device: torch.device) -> Optional["DataParallel"]:
        """The collectives a trainer uses, or None for a single process (whose code path stays the plain one)."""
        return DataParallel(self.rank, self.world_size, device) if self.enabled else None

    def gather_objects(self, obj) -> list:
        """obj of every rank, in rank order ([obj] for a single process)."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

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

    def close(self, finished: bool = False) -> None:
        """Leave the process group. `finished`: every rank ran to the end (not an exception on this rank), so all
        wait for each other first and none tears down its connections while a peer still uses them (a rank that
        left early could abort at exit: "terminate called without an active exception", seen once in CI). After
        an exception there is no barrier: the peers may never reach it."""
        if self.enabled:
            import torch.distributed as dist
            if finished:
                # NCCL's barrier needs this process's device (else it guesses GPU 0 and warns)
                dist.barrier(device_ids=[self.local_rank] if self.local_rank is not None else None)
            dist.destroy_process_group()


class GradientBuckets:
    """Bucketed asynchronous all-reduce (sum) of one network's gradients, started by gradient hooks.

    Why hooks and not DistributedDataParallel: the trainers run several backward passes from one forward, each
    limited to one network with `backward(inputs=...)` (libs/engine/trainers/base.py), and step some networks
    more than once per iteration (criticUpdates); DDP expects one backward pass per forward over the whole
    wrapped module and would sync the wrong gradients or wait for ones that never come. Here each network has
    fixed buckets (its parameters in reverse registration order, about the order backward produces them); a
    bucket's all-reduce starts when its last gradient has been accumulated (`register_post_accumulate_grad_hook`)
    and every earlier bucket has started, so all ranks issue the same collectives in the same order even when
    a rank's graph reaches fewer parameters (their zero gradients are sent at `finish`).
    """

    def __init__(self, params: Sequence[torch.nn.Parameter], order: Dict[int, int], bucket_bytes: int = BUCKET_BYTES):
        ordered = sorted(params, key=lambda p: -order.get(id(p), 0))
        self.buckets: List[List[torch.nn.Parameter]] = []
        size = bucket_bytes
        for p in ordered:
            if size >= bucket_bytes:
                self.buckets.append([])
                size = 0
            self.buckets[-1].append(p)
            size += p.numel() * p.element_size()
        self.bucket_of = {id(p): i for i, bucket in enumerate(self.buckets) for p in bucket}
        self.active = False
        self.handles = []
        self._handles = [p.register_post_accumulate_grad_hook(self._ready) for p in ordered]

    def start(self) -> None:
        """Before the network's backward pass."""
        self.pending = [len(bucket) for bucket in self.buckets]
        self.launched = 0
        self.handles = []
        self.active = True

    def _ready(self, param) -> None:
        if not self.active:
            return
        self.pending[self.bucket_of[id(param)]] -= 1
        while self.launched < len(self.buckets) and self.pending[self.launched] == 0:
            self._launch(self.launched)

    def _launch(self, index: int) -> None:
        import torch.distributed as dist
        grads = [p.grad for p in self.buckets[index]]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.handles.append((index, flat, dist.all_reduce(flat, async_op=True)))
        self.launched += 1

    def flush(self) -> None:
        """Start every bucket not started yet (after the backward pass: every parameter has a gradient by then,
        zeros where its loss did not reach it)."""
        if self.active:
            while self.launched < len(self.buckets):
                self._launch(self.launched)

    def finish(self) -> None:
        """Start what has not started, wait for everything, write the sums back."""
        self.flush()
        for index, flat, work in self.handles:
            work.wait()
            offset = 0
            for p in self.buckets[index]:
                p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
                offset += p.numel()
        self.handles = []
        self.active = False

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class DataParallel:
    """The collectives of N processes training one model on one global batch (see the module docstring)."""

    def __init__(self, rank: int, world_size: int, device: torch.device):
        self.rank, self.world_size, self.device = rank, world_size, device
        self.buckets: Dict[str, GradientBuckets] = {}

    # ---- gradients ------------------------------------------------------------------------------------------
    def watch(self, params: Dict[str, Sequence[torch.nn.Parameter]], model: torch.nn.Module,
              bucket_bytes: int = BUCKET_BYTES) -> None:
        order = {id(p): i for i, p in enumerate(model.parameters())}
        self.buckets = {net: GradientBuckets(ps, order, bucket_bytes) for net, ps in params.items()}

    def before_backward(self, net: str) -> None:
        # The previous networks' backward passes are over: their remaining buckets start now, so every rank issues
        # its all-reduces in the same order (network by network) even when a rank's graph did not reach some
        # parameters of a network.
        for other, buckets in self.buckets.items():
            if other != net:
                buckets.flush()
        self.buckets[net].start()

    def sync(self, net: str) -> None:
        """Sum the network's gradients over the ranks (before its optimizer steps)."""
        self.buckets[net].finish()

    # ---- the global batch ------------------------------------------------------------------------------------
    def gather_ints(self, values: Sequence[int]) -> List[List[int]]:
        """Every rank's list of ints (the same length on every rank), in rank order: one all-gather."""
        import torch.distributed as dist
        local = torch.tensor(list(values), dtype=torch.int64, device=self.device)
        out = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(out, local)
        return [t.tolist() for t in out]

    def sum_values(self, values: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Element-wise sums over ranks of scalar values (rank shares of global means): one all-reduce."""
        import torch.distributed as dist
        keys = list(values)
        flat = torch.stack([values[k].detach().to(self.device, torch.float64).reshape(()) for k in keys])
        dist.all_reduce(flat)
        return {k: flat[i] for i, k in enumerate(keys)}

    def exchange_boundary_runs(self, fake: torch.Tensor, real: torch.Tensor, summaries: Sequence[RunSummary],
                               plan: BoundaryRuns) -> RunContext:
        """The detached fakes and reals of the other ranks' pixels that continue this rank's first and last MMD
        run (libs/losses.py:plan_boundary_runs). Every rank sends its first run and (if different) its last run;
        call it on every rank whenever any rank's plan crosses a boundary."""
        import torch.distributed as dist
        channels = fake.shape[1]

        def sent_rows(s: RunSummary) -> int:
            return s.first_len + (s.last_len if s.runs > 1 else 0)

        rows = max(sent_rows(s) for s in summaries)
        own = summaries[self.rank]
        local = torch.zeros(rows, 2 * channels, dtype=torch.float32, device=self.device)
        if own.count:
            pixels = torch.cat([fake.detach().float(), real.detach().float()], 1)
            sent = [pixels[:own.first_len]] + ([pixels[own.count - own.last_len:]] if own.runs > 1 else [])
            sent = torch.cat(sent)
            local[:sent.shape[0]] = sent.to(self.device)
        gathered = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(gathered, local)

        def piece(p) -> torch.Tensor:
            s = summaries[p.rank]
            start = 0 if p.which == "first" or s.runs == 1 else s.first_len
            return gathered[p.rank][start:start + p.length]

        def joined(pieces):
            block = torch.cat([piece(p) for p in pieces]) if pieces else local.new_zeros(0, 2 * channels)
            block = block.to(fake.device)
            return block[:, :channels], block[:, channels:]

        before_fake, before_real = joined(plan.before)
        after_fake, after_real = joined(plan.after)
        return RunContext(before_fake, before_real, after_fake, after_real, plan.num_runs)


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
