"""Several processes (gloo on the CPU): training one model (every optimizer step goes through the gradient sync)
and sharded evaluation (docs/method.md §7.7)."""
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from libs.datasets import ZeroShotSegmentation, collate_test, load_class_splits, load_split_list
from libs.engine.distributed import Processes
from libs.engine.evaluation import evaluate
from libs.engine.trainers.cagnet import CaGNetTrainer, LossWeights, backbone_optimizer
from libs.metrics import SCORE_KEYS
from libs.optimizers import make_optimizer
from libs.schedulers import build_scheduler
from tests.conftest import build_tiny_model
from tests.datagen import write_dataset

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


def _eval_worker(rank, world, port, data_dir, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        processes = Processes(rank, world, enabled=True)
        splits = load_class_splits(data_dir, "toy")
        results = {}
        for mode in ("feature", "full"):
            data = ZeroShotSegmentation(os.path.join(data_dir, "toy"), load_split_list(data_dir, "toy", "test"),
                                        splits, train=False, base_size=65, originals=True)
            loader = torch.utils.data.DataLoader(data, batch_size=2, sampler=processes.shard(len(data)),
                                                 collate_fn=collate_test)
            results[mode] = evaluate(build_tiny_model(seed=0), loader, splits, torch.device("cpu"), mode=mode,
                                     predictions_dir=os.path.join(out_dir, mode), all_reduce=processes.all_reduce_sum)
            results[mode]["shard"] = processes.shard(len(data))
        torch.save(results, os.path.join(out_dir, f"eval{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_sharded_evaluation_equals_one_process_exactly(tmp_path):
    """5 test images (odd) over 2 gloo processes: shares of 3 and 2 images, no padding or duplicate; the summed
    confusion matrices, hence every score, equal single-process evaluation bit for bit."""
    toy = write_dataset(str(tmp_path / "data"), n_train=1, n_test=5, image_size=[(40, 56), (60, 48), (33, 71)])
    mp.spawn(_eval_worker, args=(2, _free_port(), toy.datadir, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"eval{r}.pt", weights_only=False) for r in range(2)]
    splits = load_class_splits(toy.datadir, toy.name)
    data = ZeroShotSegmentation(toy.root, load_split_list(toy.datadir, toy.name, "test"), splits, train=False,
                                base_size=65, originals=True)
    for mode in ("feature", "full"):
        assert ranks[0][mode]["shard"] == [0, 2, 4] and ranks[1][mode]["shard"] == [1, 3]
        single = evaluate(build_tiny_model(seed=0), torch.utils.data.DataLoader(data, batch_size=2,
                          collate_fn=collate_test), splits, torch.device("cpu"), mode=mode,
                          predictions_dir=str(tmp_path / f"single-{mode}"))
        assert single["confusion"].sum() > 0
        for result in ranks:
            assert np.array_equal(result[mode]["confusion"], single["confusion"]), mode
            for key in SCORE_KEYS:
                assert result[mode][key] == single[key] or (np.isnan(result[mode][key]) and np.isnan(single[key]))
            assert np.array_equal(result[mode]["class_iou"], single["class_iou"], equal_nan=True)
        # each image's prediction was written once, by the rank that scored it, and equals the single run's
        names = sorted(os.listdir(tmp_path / mode))
        assert names == sorted(os.listdir(tmp_path / f"single-{mode}")) and len(names) == 5
        for name in names:
            assert (tmp_path / mode / name).read_bytes() == (tmp_path / f"single-{mode}" / name).read_bytes()
