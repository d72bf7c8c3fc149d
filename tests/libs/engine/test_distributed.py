"""Several processes (gloo on the CPU) compute what one process computes on the same global batch
(docs/method.md §8.6): the parameters are identical on every rank and equal to a one-process run's.

The comparisons run the models in float64 and allow |Δ| <= 1e-9 per parameter element (measured: ~1e-15 per
gradient, ~1e-13 on the weights after the runs below): the processes sum their gradient shares in another order
than one process sums its pixels, nothing else differs. In float32 the same runs differ by far more than
reduction order alone would explain, and not because of the method: the convolutions pick other kernels for a
batch of 1 or 2 images than for 2 or 4, whose last-bit differences flip ReLU and max decisions of the
from-scratch tiny model, and training amplifies them (measured on the tiny e2e config: 5e-7 after one iteration,
1e-4 after two, 2e-3 after four; one process with 1 instead of 2 threads: 1e-4 after four). One wrong random
draw or one wrongly normalised loss moves the parameters by ~1e-4 at once. Across ranks the parameters must be
bit-identical (every rank applies the same summed gradients). tests/test_train.py runs the float32 command line
with torchrun for one iteration. Sharded evaluation equals one process (docs/method.md §7.7).
"""
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import train
from libs.datasets import ZeroShotSegmentation, collate_test, load_class_splits, load_split_list
from libs.datasets.stream import BatchStream
from libs.engine.distributed import DataParallel, Processes
from libs.engine.evaluation import evaluate
from libs.engine.run import Run, RunOptions, run_config
from libs.engine.trainers.cagnet import CaGNetTrainer, LossWeights, backbone_optimizer
from libs.metrics import SCORE_KEYS
from libs.optimizers import make_optimizer
from libs.schedulers import build_scheduler
from tests.conftest import build_tiny_model
from tests.datagen import write_dataset
from tests.e2e_config import write_tiny_config

pytestmark = pytest.mark.slow   # starts processes

ONE_PROCESS_ATOL = 1e-9


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_same_model(one, ranks):
    worst = 0.0
    for key, value in one.items():
        for other in ranks[1:]:
            assert torch.equal(ranks[0][key], other[key]), f"{key} differs between ranks"
        if value.is_floating_point():
            worst = max(worst, (value - ranks[0][key]).abs().max().item())
    assert worst <= ONE_PROCESS_ATOL, f"max |one process - two processes| = {worst}"
    return worst


# ---- trainer level: hand-made global batches with the edge cases --------------------------------------------
def _global_batches():
    """Four global batches of 4 images (48x48, train ids 0..2, 255 = ignore): ordinary; image 0-1 (rank 0's part)
    without any visible pixel; nothing visible at all (skipped); an MMD run of class 1 across the rank boundary."""
    g = torch.Generator().manual_seed(7)
    batches = []
    for kind in ("plain", "rank0_empty", "all_empty", "crossing"):
        images = torch.randn(4, 3, 48, 48, generator=g, dtype=torch.float64)
        labels = torch.randint(0, 3, (4, 48, 48), generator=g)
        labels[:, :, :12] = 255
        if kind == "rank0_empty":
            labels[:2] = 255
        elif kind == "all_empty":
            labels[:] = 255
        elif kind == "crossing":
            labels[1, 30:] = 1          # the end of rank 0's raster order ...
            labels[2, :20] = 1          # ... and the start of rank 1's: one run of class 1
        batches.append((images, labels))
    return batches


def _trainer(model, parallel):
    optimizers = {"back": backbone_optimizer(model, "sgd", 1e-3, 5e-4),
                  "dis": make_optimizer("adam", [{"params": list(model.dis.parameters())}], 1e-3, 5e-4),
                  "gen": make_optimizer("adam", [{"params": list(model.gen.parameters())}], 1e-3, 0.0)}
    schedulers = {k: build_scheduler(o, "constant", init_lr=1e-3) for k, o in optimizers.items()}
    return CaGNetTrainer(model, optimizers, schedulers, LossWeights(D_cls_fake=0.25, G_cls=0.5,
                                                                    D_cls_fake_transfer=0.125, G_cls_transfer=1.0),
                         gan_type="wgan-gp", critic_updates=2, num_seen=3, num_unseen=2, unseen_rate=9.0,
                         parallel=parallel)


def _step_worker(rank, world, port, out_dir):
    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = build_tiny_model(seed=0).double()        # the same initial weights on every rank
        trainer = _trainer(model, DataParallel(rank, world, torch.device("cpu")) if world > 1 else None)
        torch.manual_seed(3)                             # every rank's generator in the same state
        logged = []
        for images, labels in _global_batches():
            part = slice(rank * 4 // world, (rank + 1) * 4 // world)
            values = trainer.step1(images[part], labels[part])
            logged.append(None if values is None else {k: float(v) for k, v in values.items()})
            logged.append({k: float(v) for k, v in trainer.step2().items()})
        torch.save({"params": {k: v.detach().clone() for k, v in model.state_dict().items()}, "logged": logged},
                   os.path.join(out_dir, f"world{world}_rank{rank}.pt"))
    finally:
        if world > 1:
            dist.destroy_process_group()


def test_two_process_steps_equal_one_process_steps(tmp_path):
    """wgan-gp (per-image mixing weights), two critic updates, a rank without visible pixels, a skipped global
    batch, an MMD run across the rank boundary and step 2 after every step 1."""
    mp.spawn(_step_worker, args=(1, 0, str(tmp_path)), nprocs=1, join=True)
    mp.spawn(_step_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    one = torch.load(tmp_path / "world1_rank0.pt")
    two = [torch.load(tmp_path / f"world2_rank{r}.pt") for r in range(2)]
    _assert_same_model(one["params"], [t["params"] for t in two])
    # the skip is agreed: the all-empty batch is skipped by both ranks and by the one process, nothing else is
    assert [v is None for v in one["logged"]] == [False, False, False, False, True, False, False, False]
    for t in two:
        assert [v is None for v in t["logged"]] == [v is None for v in one["logged"]]
        # logged values are global means: the same on both ranks and as one process's (accuracies are float32
        # ratios of counts, whatever the model's precision)
        for mine, ref in zip(t["logged"], one["logged"]):
            if ref is not None:
                for key, value in ref.items():
                    rel = 1e-6 if key.startswith("acc") else 1e-9
                    assert mine[key] == pytest.approx(value, rel=rel, abs=1e-12, nan_ok=True), key


# ---- run level: train.py's Run, real data, step 1 then mixed ---------------------------------------------------
def _run_worker(rank, world, port, argv, out_dir, double=True):
    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
        argv = [*argv, "--multigpus", "--ngpu", str(world)]
    exchanges = []
    original = DataParallel.exchange_boundary_runs

    def counted(self, *args, **kwargs):
        exchanges.append(1)
        return original(self, *args, **kwargs)

    DataParallel.exchange_boundary_runs = counted
    if double:
        next_batch = BatchStream.next
        BatchStream.next = lambda self: tuple(t.double() if t.is_floating_point() else t for t in next_batch(self))
    args = train.parse_args(argv)
    options = RunOptions(schedule=args.schedule, init_model=None if args.init_model == "none" else args.init_model,
                         device="cpu", multigpus=args.multigpus, ngpu=args.ngpu, resume_from=args.resume_from,
                         experiment_id=args.experimentid)
    run = Run(run_config(args.config, options), options, args.config)
    if double:
        run.model.double()              # float64: see the module docstring
    run.train()
    torch.save({"params": {k: v.clone() for k, v in run.model.state_dict().items()}, "exchanges": len(exchanges)},
               os.path.join(out_dir, f"world{world}_rank{rank}.pt"))


def _train_both(tmp_path, name, base, toy, schedule, **changes):
    results = {}
    for world in (1, 2):
        out = tmp_path / f"{name}-{world}"
        out.mkdir()
        cfg = write_tiny_config(str(tmp_path / f"{name}-{world}.yaml"), base, toy, str(tmp_path / f"R{world}"),
                                BATCH_SIZE__TRAIN=4, **changes)
        mp.spawn(_run_worker, args=(world, _free_port(), ["--config", cfg, "--schedule", schedule], str(out)),
                 nprocs=world, join=True)
        results[world] = [torch.load(out / f"world{world}_rank{r}.pt") for r in range(world)]
    return results


def test_two_process_runs_train_the_one_process_model(tmp_path):
    """5 training images, global batch 4: every epoch ends with a batch of 1, so rank 1 gets no image there."""
    toy = write_dataset(str(tmp_path / "data"), n_train=5, n_test=2, image_size=[(40, 56), (60, 48)])
    # snapshot beyond ITER_MAX: the final checkpoint is written without a test run (whose loader gives float32)
    step1 = _train_both(tmp_path, "step1", "voc12", toy, "step1", ITER_MAX=4, snapshot=100)
    _assert_same_model(step1[1][0]["params"], [r["params"] for r in step1[2]])
    assert all(r["exchanges"] > 0 for r in step1[2])     # an MMD run crossed the rank boundary
    init = os.path.join(str(tmp_path / "R1"), toy.name, "0", "models", "00000004.pth")
    mixed = _train_both(tmp_path, "mixed", "voc12_finetune", toy, "mixed", ITER_MAX_TRANSFER=6, snapshot=100,
                        interval_step1=2, interval_step2=1, init_model=init)
    _assert_same_model(mixed[1][0]["params"], [r["params"] for r in mixed[2]])
    streams = []
    for world in (1, 2):
        ckpt = torch.load(os.path.join(str(tmp_path / f"R{world}"), toy.name, "0", "models_transfer", "00000006.pth"),
                          weights_only=False)
        state = ckpt["training_state"]
        streams.append(state["stream"])
        assert len(state["rng_ranks"]) == world
        # the ranks' generators are in the same state (models/shard.py), so any number of processes can resume
        assert all(torch.equal(r["torch"], state["rng_ranks"][0]["torch"]) for r in state["rng_ranks"])
    # the stream counts global items, the same with one and two processes; it went through epochs of 4 + 1 images
    assert streams[0] == streams[1] and streams[0]["epoch"] >= 1
    # rank 0 logs the global losses (each rank's part of a global mean, summed over the ranks): the loss lines of
    # both runs are the same, digit for digit
    lines = []
    for world in (1, 2):
        text = open(os.path.join(str(tmp_path / f"R{world}"), toy.name, "0", "logs_transfer.txt")).read()
        lines.append([line.split(" ", 2)[2] for line in text.splitlines() if "] iter " in line])
    assert len(lines[0]) == 3 and lines[0] == lines[1]


def test_two_process_run_resumes_exactly(tmp_path):
    """Two processes (float32) stopped at a snapshot and resumed by two processes write the uninterrupted run's
    final checkpoint bit for bit: every rank's RNG state and the global stream position are in the checkpoint."""
    toy = write_dataset(str(tmp_path / "data"), n_train=5, n_test=2, image_size=[(40, 56), (60, 48)])
    cfg = write_tiny_config(str(tmp_path / "step1.yaml"), "voc12", toy, str(tmp_path / "R"), BATCH_SIZE__TRAIN=4,
                            ITER_MAX=5, snapshot=2)
    folder = os.path.join(str(tmp_path / "R"), toy.name, "0", "models")
    port = _free_port()
    mp.spawn(_run_worker, args=(2, port, ["--config", cfg], str(tmp_path), False), nprocs=2, join=True)
    final = torch.load(os.path.join(folder, "00000005.pth"), weights_only=False)
    os.remove(os.path.join(folder, "00000005.pth"))
    mp.spawn(_run_worker, args=(2, _free_port(), ["--config", cfg, "--resume_from", "2"], str(tmp_path), False),
             nprocs=2, join=True)
    resumed = torch.load(os.path.join(folder, "00000005.pth"), weights_only=False)
    for key, value in final["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    assert final["training_state"]["stream"] == resumed["training_state"]["stream"]


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
