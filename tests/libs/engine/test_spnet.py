"""SPNet's trainer (baselines-spec §1.2), SPNet-c's calibration (§1.3) and the method plumbing (method table,
method-specific config keys, the checkpoint's method record)."""
import copy
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
import yaml
from PIL import Image

from libs.checkpoint import check_method, checkpoint_method, export_original, snapshot
from libs.config import ConfigError, load_config, validate_config
from libs.datasets import ZeroShotSegmentation, collate_test, load_class_splits, load_split_list
from libs.engine.distributed import DataParallel
from libs.engine.evaluation import evaluate, predicted_ids
from libs.engine.methods import METHOD_NAMES, get_method
from libs.engine.schedules import get_schedule
from libs.engine.trainers.cagnet import CaGNetTrainer
from libs.engine.trainers.spnet import SPNetTrainer, spnet_optimizer
from libs.schedulers import build_scheduler
from models.ops import nearest_resize
from tests.datagen import write_dataset
from tests.e2e_config import ROOT
from tests.models.test_spnet import tiny_spnet

SPNET_VOC = os.path.join(ROOT, "configs", "spnet_voc12.yaml")


def trainer_of(model, lr=1e-2, chunk_size=2, iter_size=1, parallel=None):
    opt = spnet_optimizer(model, "sgd", lr, 5e-4)
    sched = build_scheduler(opt, "constant", init_lr=lr)
    return SPNetTrainer(model, {"back": opt}, {"back": sched}, chunk_size=chunk_size, iter_size=iter_size,
                        parallel=parallel)


def batch(n=2, size=41, seed=0, num_seen=3):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g)
    labels = torch.randint(0, num_seen, (n, size, size), generator=g)
    labels[:, :, :10] = 255
    return images, labels


def hand_loss(model, images, labels):
    """Sum over the four outputs of the mean over labelled pixels of -log softmax(score)[label], pixel by pixel."""
    with torch.no_grad():
        outputs = model.train_scores(images)
    total = 0.0
    for scores in outputs:
        y = nearest_resize(labels, scores.shape[-2:])
        terms = []
        for n, i, j in (y != 255).nonzero().tolist():
            logp = torch.log_softmax(scores[n, :, i, j].double(), 0)
            terms.append(-logp[y[n, i, j]].item())
        total += sum(terms) / len(terms)
    return total


# ---- the loss ----------------------------------------------------------------------------------------------
def test_loss_is_the_sum_of_the_four_mean_cross_entropies():
    model = tiny_spnet()
    images, labels = batch(size=25)
    expected = hand_loss(copy.deepcopy(model), images, labels)
    values = trainer_of(model).step("step1", (images, labels))
    assert values["cls_real"].item() == pytest.approx(expected, rel=1e-5)
    # summed, not averaged: about 4 times one output's cross-entropy
    assert values["cls_real"].item() > 3 * np.log(3) * 0.5


def test_gradient_accumulation_equals_the_mean_of_the_chunk_losses():
    """ITER_SIZE 2: chunks of one image, each chunk's loss / 2, one step; gradients = those of the hand loss."""
    model = tiny_spnet()
    images, labels = batch()
    reference = copy.deepcopy(model)
    loss = 0
    for k in range(2):
        outputs = reference.train_scores(images[k:k + 1])
        for scores in outputs:
            y = nearest_resize(labels[k:k + 1], scores.shape[-2:])
            loss = loss + F.cross_entropy(scores, y, ignore_index=255) / 2
    loss.backward()
    trainer = trainer_of(model, chunk_size=1, iter_size=2)
    values = trainer.step("step1", (images, labels))
    assert values["cls_real"].item() == pytest.approx(loss.item(), rel=1e-5)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        if p.requires_grad:
            assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-7), name


def test_batch_without_labelled_pixel_is_skipped_and_changes_nothing():
    model = tiny_spnet()
    images, labels = batch()
    labels[:] = 255
    before = copy.deepcopy(model.state_dict())
    assert trainer_of(model).step("step1", (images, labels)) is None
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_param_groups_learning_rates_and_poly_every_ten_iterations(tmp_path):
    cfg = load_config(SPNET_VOC)
    model = tiny_spnet(dim=600)
    trainer = SPNetTrainer.from_config(cfg, model, None, get_schedule("step1"))
    groups = trainer.optimizers["back"].param_groups
    assert [g["name"] for g in groups] == ["resnet", "aspp_weight", "aspp_bias"]
    assert [g["lr"] for g in groups] == pytest.approx([2.5e-4, 2.5e-3, 5e-3])
    assert [g["weight_decay"] for g in groups] == [5e-4, 5e-4, 0.0]
    assert all(g["momentum"] == 0.9 for g in groups)
    assert isinstance(trainer.optimizers["back"], torch.optim.SGD)
    bn = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    assert not bn & {id(p) for g in groups for p in g["params"]}
    sched = trainer.schedulers["back"]
    for k in range(1, 21):
        sched.step()
        # SPNet: lr = LR (1 - k'/20000)^0.9 with k' the last multiple of 10 (train.py:75-81)
        assert groups[0]["lr"] == pytest.approx(2.5e-4 * (1 - (k - k % 10) / 20000) ** 0.9)
    assert groups[2]["lr"] == pytest.approx(20 * groups[0]["lr"])
    with pytest.raises(ValueError, match="--schedule step1 only"):
        SPNetTrainer.from_config(cfg, model, None, get_schedule("mixed"))


def test_iter_size_with_several_processes_is_refused():
    model = tiny_spnet()
    with pytest.raises(ValueError, match="ITER_SIZE 2 cannot run with several processes"):
        trainer_of(model, iter_size=2, parallel=DataParallel(0, 2, torch.device("cpu")))


# ---- SPNet-c calibration -----------------------------------------------------------------------------------
def test_calibration_flips_a_known_pixel():
    """Logits (seen 2.0, seen 0.0, unseen 1.5): softmax 0.574 / 0.078 / 0.348. gamma 0.2 keeps the seen class,
    0.6 (SPNet's VOC value) makes the unseen class win (0.574 - 0.6 < 0.348)."""
    logits = torch.tensor([2.0, 0.0, 1.5]).reshape(1, 3, 1, 1)
    p = torch.softmax(logits.flatten(), 0)
    assert p.tolist() == pytest.approx([0.5741, 0.0777, 0.3482], abs=1e-4)
    assert predicted_ids(logits, 2, 3, 0.0).item() == 0
    assert predicted_ids(logits, 2, 3, 0.2).item() == 0
    assert predicted_ids(logits, 2, 3, 0.6).item() == 2


class FixedLogits(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def predict(self, images):
        return self.logits.expand(images.shape[0], -1, -1, -1)


def test_warped_mode_is_spnets_protocol(tmp_path):
    """eval_mode warped = SPNet eval.py: scores upsampled (bilinear, align_corners False) to the warped input,
    softmax over S+U, gamma off the seen probabilities, argmax, against the warped label. The left column's
    scores favour seen class 0 only without calibration; the label is unseen raw 5 (test id 3) everywhere."""
    toy = write_dataset(str(tmp_path), n_train=1, n_test=1, image_size=(8, 8))
    splits = load_class_splits(toy.datadir, toy.name)
    Image.fromarray(np.full((8, 8), 5, np.uint8), mode="L").save(f"{toy.root}/annotations/val/"
                                                                 f"{toy.test_entries[0][1]}.png")
    data = ZeroShotSegmentation(toy.root, load_split_list(toy.datadir, toy.name, "test"), splits, train=False,
                                base_size=8, originals=True)
    loader = torch.utils.data.DataLoader(data, batch_size=1, collate_fn=collate_test)
    logits = torch.full((1, 5, 2, 2), -10.0)
    logits[0, 0] = 2.0
    logits[0, 3] = 1.5
    plain = evaluate(FixedLogits(logits), loader, splits, torch.device("cpu"), mode="warped")
    calibrated = evaluate(FixedLogits(logits), loader, splits, torch.device("cpu"), mode="warped", calibration=0.6)
    assert plain["confusion"].sum() == calibrated["confusion"].sum() == 64          # scored at the 8x8 input
    assert plain["U-mIoU"] == 0.0 and calibrated["U-mIoU"] == 1.0


# ---- the method plumbing -----------------------------------------------------------------------------------
def test_method_table_and_config_choice():
    assert {"cagnet", "spnet"} <= set(METHOD_NAMES)
    assert get_method("spnet") is SPNetTrainer and get_method("cagnet") is CaGNetTrainer
    data = yaml.safe_load(open(SPNET_VOC))
    with pytest.raises(ConfigError, match="'method' has value 'spnt'.*did you mean 'spnet'"):
        validate_config({**data, "method": "spnt"}, "x.yaml")
    # an spnet config needs no generator / classifier keys, a cagnet config does
    assert "gen" not in data and "lambda_B_KLD" not in data
    with pytest.raises(ConfigError, match="missing required keys.*gen.in_dim_mlp"):
        validate_config({**data, "method": "cagnet"}, "x.yaml")
    with pytest.raises(ConfigError, match="back.n_classes is 16; expected the embedding dim 600"):
        validate_config({**data, "back": {"n_classes": 16}}, "x.yaml")
    cagnet = yaml.safe_load(open(os.path.join(ROOT, "configs", "voc12.yaml")))
    with pytest.raises(ConfigError, match="ITER_SIZE is 2; only method spnet"):
        validate_config({**cagnet, "ITER_SIZE": 2}, "x.yaml")
    assert get_method("spnet").stream_batch_size(load_config(os.path.join(ROOT, "configs",
                                                                          "spnet_cocostuff.yaml"))) == 10


def test_checkpoint_method_record():
    model = tiny_spnet()
    saved = snapshot(model, 3, {"schedule": "step1"}, {"method": "spnet"}, method="spnet")
    assert saved["method"] == "spnet" and checkpoint_method(saved) == "spnet"
    # weights only: the record survives export; old checkpoints without it are CaGNet's; bare state dicts none
    assert checkpoint_method(export_original(saved)) == "spnet"
    assert checkpoint_method({"iteration": 1, "state_dict": {}}) == "cagnet"
    assert checkpoint_method({"iteration": 1, "state_dict": {}, "config": {"method": "spnet"}}) == "spnet"
    assert checkpoint_method(model.state_dict()) is None
    assert "method" not in export_original({"iteration": 1, "state_dict": {}})
    with pytest.raises(ValueError, match="--val: m.pth is a spnet checkpoint, but the config has method cagnet"):
        check_method(saved, "cagnet", "m.pth", "--val")
    check_method(saved, "spnet", "m.pth", "--val")


# ---- several processes ---------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_dir):
    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = tiny_spnet().double()
        trainer = trainer_of(model, chunk_size=4,
                             parallel=DataParallel(rank, world, torch.device("cpu")) if world > 1 else None)
        logged = []
        for seed in range(3):
            images, labels = batch(4, seed=seed)
            images = images.double()
            if seed == 1:
                labels[:2] = 255            # rank 0's part has no labelled pixel
            part = slice(rank * 4 // world, (rank + 1) * 4 // world)
            values = trainer.step("step1", (images[part], labels[part]))
            logged.append({k: float(v) for k, v in values.items()})
        torch.save({"params": {k: v.clone() for k, v in model.state_dict().items()}, "logged": logged},
                   os.path.join(out_dir, f"w{world}r{rank}.pt"))
    finally:
        if world > 1:
            dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_train_as_one(tmp_path):
    """Global normalisation of the cross-entropy: two processes (gloo) give one process's weights (float64)."""
    mp.spawn(_worker, args=(1, 0, str(tmp_path)), nprocs=1, join=True)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    one = torch.load(tmp_path / "w1r0.pt")
    two = [torch.load(tmp_path / f"w2r{r}.pt") for r in range(2)]
    for key, value in one["params"].items():
        assert torch.equal(two[0]["params"][key], two[1]["params"][key]), key
        if value.is_floating_point():
            assert (value - two[0]["params"][key]).abs().max().item() <= 1e-9, key
    for t in two:
        for mine, ref in zip(t["logged"], one["logged"]):
            assert mine == pytest.approx(ref, rel=1e-9)
