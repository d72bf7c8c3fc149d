"""Data-parallel scaling: N processes training on one global batch against one process (docs/method.md §8.6).

    python -m tools.scaling --processes 2 --threads 1 --batch 2 --crop 161          # CPU, gloo
    python -m tools.scaling --device cuda --processes 8 --batch 8 --crop 368        # one GPU per process, nccl

Times step-1 iterations (backbone trained) of the paper-size model (--tiny: a small one) with the global batch
--batch: once in one process, once in N processes that each hold batch / N images (each process with --threads
intra-op threads on the CPU). The gradients' all-reduces run in buckets while the backward pass goes on
(libs/engine/distributed.py). Strong-scaling efficiency = t(1 process) / (N * t(N processes)); 1.0 is perfect.
On the CPU the N processes share the machine's cores, so the one-process reference is also given with
N * --threads threads (the same cores in total).
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time

if not __package__:  # `python tools/<name>.py`: the repository root on the path, as `python -m tools.<name>` has it
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from libs.engine.distributed import DataParallel
from libs.engine.precision import Precision
from tools.benchmark import build, trainer_for


def _time_steps(rank, world, port, args, out_dir, threads):
    torch.set_num_threads(threads)
    device = torch.device("cuda", rank) if args.device == "cuda" else torch.device("cpu")
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
        if device.type == "cuda":
            torch.cuda.set_device(device)
    try:
        torch.manual_seed(0)
        model = build(args.tiny, device, False)
        trainer = trainer_for(model, True, Precision(args.amp, device.type),
                              DataParallel(rank, world, device) if world > 1 else None)
        g = torch.Generator().manual_seed(1)
        images = torch.randn(args.batch, 3, args.crop, args.crop, generator=g)
        labels = torch.randint(0, 15, (args.batch, args.crop, args.crop), generator=g)
        labels[:, : args.crop // 3] = 255
        part = slice(rank * args.batch // world, (rank + 1) * args.batch // world)
        images, labels = images[part].to(device), labels[part].to(device)
        times = []
        for i in range(args.warmup + args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if world > 1:
                dist.barrier()
            start = time.perf_counter()
            trainer.step1(images, labels)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
        torch.save(times, os.path.join(out_dir, f"{world}-{threads}-{rank}.pt"))
    finally:
        if world > 1:
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(world: int, threads: int, args, out_dir: str) -> float:
    """Median seconds per step-1 iteration (the slowest rank's)."""
    mp.spawn(_time_steps, args=(world, _free_port(), args, out_dir, threads), nprocs=world, join=True)
    per_rank = [torch.load(os.path.join(out_dir, f"{world}-{threads}-{r}.pt")) for r in range(world)]
    return statistics.median(max(ts) for ts in zip(*per_rank))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process (CPU)")
    parser.add_argument("--batch", type=int, default=2, help="global batch (a multiple of --processes)")
    parser.add_argument("--crop", type=int, default=161)
    parser.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"))
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args(argv)
    if args.batch % args.processes:
        raise SystemExit(f"--batch {args.batch} must be a multiple of --processes {args.processes}")
    with tempfile.TemporaryDirectory() as out:
        one = measure(1, args.threads, args, out)
        many = measure(args.processes, args.threads, args, out)
        same_cores = measure(1, args.threads * args.processes, args, out) if args.device == "cpu" else None
    n = args.processes
    print(f"step 1, global batch {args.batch}, crop {args.crop}, amp {args.amp}, {args.device}")
    print(f"  1 process x {args.threads} threads: {one:.3f} s")
    if same_cores is not None:
        print(f"  1 process x {n * args.threads} threads: {same_cores:.3f} s")
    print(f"  {n} processes x {args.threads} threads: {many:.3f} s")
    print(f"  speed-up {one / many:.2f}x, strong-scaling efficiency {one / (n * many):.2f}"
          + (f"; against one process on the same cores {same_cores / many:.2f}x" if same_cores else ""))
    return {"one": one, "many": many, "same_cores": same_cores}


if __name__ == "__main__":
    main()
