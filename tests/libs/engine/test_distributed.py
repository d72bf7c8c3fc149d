"""Several processes (gloo on the CPU) training one model: every optimizer step goes through the gradient sync."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from libs.engine.distributed import Processes
from libs.engine.trainers.cagnet import CaGNetTrainer, LossWeights, backbone_optimizer
from libs.optimizers import make_optimizer
from libs.schedulers import build_scheduler
from tests.conftest import build_tiny_model

pytestmark = pytest.mark.slow   # starts processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _critic_worker(rank, world, port, out_dir, critic_updates):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = build_tiny_model(seed=0)                 # the same initial weights on every rank
        optimizers = {"back": backbone_optimizer(model, "sgd", 1e-3, 5e-4),
                      "dis": make_optimizer("adam", [{"params": list(model.dis.parameters())}], 1e-3, 5e-4),
                      "gen": make_optimizer("adam", [{"params": list(model.gen.parameters())}], 1e-3, 0.0)}
        schedulers = {k: build_scheduler(o, "constant", init_lr=1e-3) for k, o in optimizers.items()}
        trainer = CaGNetTrainer(model, optimizers, schedulers, LossWeights(), num_seen=3, num_unseen=2,
                                critic_updates=critic_updates,
                                grad_sync=Processes(rank, world, enabled=True).grad_sync)
        g = torch.Generator().manual_seed(100 + rank)     # each rank its own batch, as under torchrun
        torch.manual_seed(rank)
        for _ in range(2):
            images = torch.randn(2, 3, 48, 48, generator=g)
            labels = torch.randint(0, 3, (2, 48, 48), generator=g)
            assert trainer.step1(images, labels) is not None
        torch.save({name: p.detach().clone() for name, p in model.named_parameters()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_extra_critic_updates_keep_the_classifier_replicas_identical(tmp_path):
    mp.spawn(_critic_worker, args=(2, _free_port(), str(tmp_path), 2), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name
