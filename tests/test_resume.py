"""Resume is exact in every case (docs/method.md §8.5): an interrupted run resumed from any snapshot writes the
checkpoints, bit for bit, that the uninterrupted run writes. Each case below once failed: a snapshot inside a
step-2 block, a run stopped with --max_iter between snapshots and resumed from the last one, a run started with
--seed resumed without it, and mixed precision with its gradient scaler. A weights-only checkpoint (the
original's) inside a step-2 block resumes instead of failing."""
import os
import shutil

import pytest
import torch

from libs.checkpoint import export_original
from tests.datagen import write_dataset
from tests.e2e_config import run_train, write_tiny_config

pytestmark = pytest.mark.slow   # subprocess runs of train.py


train = run_train


def load(path):
    return torch.load(path, weights_only=False)


def assert_same_checkpoint(a, b):
    assert a["iteration"] == b["iteration"]
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert a["training_state"]["stream"] == b["training_state"]["stream"]
    assert torch.equal(a["training_state"]["rng"]["torch"], b["training_state"]["rng"]["torch"])
    assert a["training_state"]["trainer"]["precision"] == b["training_state"]["trainer"]["precision"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    # 6 images, batch 2: 3 batches per epoch, so every run below crosses epoch starts (new loaders)
    toy = write_dataset(str(tmp / "data"), n_train=6, n_test=2, image_size=[(40, 56), (60, 48)])
    results = str(tmp / "Results")
    init_cfg = write_tiny_config(str(tmp / "init.yaml"), "voc12", toy, results, ITER_MAX=2, snapshot=2)
    train("--config", init_cfg, "--experimentid", "init")
    init = os.path.join(results, toy.name, "init", "models", "00000002.pth")
    # mixed: blocks of 2 step-1 and 3 step-2 iterations, snapshots at 3 (inside a step-2 block) and 6
    mixed = write_tiny_config(str(tmp / "mixed.yaml"), "voc12_finetune", toy, results, ITER_MAX_TRANSFER=9,
                              snapshot=3, interval_step1=2, interval_step2=3, init_model=init)
    step1 = write_tiny_config(str(tmp / "step1.yaml"), "voc12", toy, results, ITER_MAX=8, snapshot=3)
    return dict(tmp=tmp, toy=toy, exp=lambda name: os.path.join(results, toy.name, name), mixed=mixed, step1=step1)


@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_mixed_run_resumed_inside_a_step2_block(setup, amp):
    """Resumed at iteration 3, the next iterations are step 2 (block 2..4); the test run at the snapshot and the
    new loaders of the resumed run draw nothing from the training's RNG. With --amp the mode is restored from the
    checkpoint (the resume passes no --amp) and fp16's gradient scaler continues with its saved scale."""
    name = f"mixed-{amp}"
    train("--config", setup["mixed"], "--schedule", "mixed", "--experimentid", name, "--amp", amp)
    folder = os.path.join(setup["exp"](name), "models_transfer")
    final = load(os.path.join(folder, "00000009.pth"))
    if amp == "fp16":
        assert final["training_state"]["trainer"]["precision"]["scaler"]["_growth_tracker"] > 0
    os.remove(os.path.join(folder, "00000009.pth"))
    train("--config", setup["mixed"], "--schedule", "mixed", "--experimentid", name, "--resume_from", "3")
    assert_same_checkpoint(final, load(os.path.join(folder, "00000009.pth")))
    assert final["training_state"]["run"]["amp"] == amp


def test_step1_stopped_between_snapshots_and_resumed_without_its_seed(setup):
    """--seed 1 --max_iter 5 stops between the snapshots 3 and 6; resumed from 3 without --seed and without
    --max_iter it writes the uninterrupted --seed 1 run's checkpoints 6 and 8."""
    exp = setup["exp"]
    train("--config", setup["step1"], "--experimentid", "whole", "--seed", "1")
    train("--config", setup["step1"], "--experimentid", "cut", "--seed", "1", "--max_iter", "5")
    assert sorted(os.listdir(os.path.join(exp("cut"), "models"))) == ["00000003.pth", "00000005.pth"]
    proc = train("--config", setup["step1"], "--experimentid", "cut", "--resume_from", "3", "--seed", "2", ok=False)
    assert proc.returncode == 2 and "started with seed 1, not --seed 2" in proc.stderr
    train("--config", setup["step1"], "--experimentid", "cut", "--resume_from", "3")
    for it in (6, 8):
        name = "%08d.pth" % it
        assert_same_checkpoint(load(os.path.join(exp("whole"), "models", name)),
                               load(os.path.join(exp("cut"), "models", name)))


def test_original_checkpoint_inside_a_step2_block_resumes(setup):
    """A weights-only checkpoint (the original's format) knows no step-2 size: step 2 then takes N*h*w of a full
    batch from the config instead of stopping with the `first: step2` error (docs/method.md §9.2 D31)."""
    train("--config", setup["mixed"], "--schedule", "mixed", "--experimentid", "mixed-src", "--max_iter", "3")
    source = setup["exp"]("mixed-src")
    target = setup["exp"]("original")
    os.makedirs(os.path.join(target, "models_transfer"))
    shutil.copy(os.path.join(source, "configs_transfer.yaml"), target)
    torch.save(export_original(load(os.path.join(source, "models_transfer", "00000003.pth"))),
               os.path.join(target, "models_transfer", "00000003.pth"))
    proc = train("--config", setup["mixed"], "--schedule", "mixed", "--experimentid", "original",
                 "--resume_from", "3", "--max_iter", "5")
    assert "first: step2" not in proc.stdout + proc.stderr
    assert "holds no training state" in proc.stderr
    resumed = load(os.path.join(target, "models_transfer", "00000005.pth"))
    assert resumed["training_state"]["trainer"]["num_pixels"] == 2 * 7 * 7      # batch 2, 49 -> 7x7 features
    assert resumed["training_state"]["trainer"]["schedulers"]["dis"]["last_iter"] == 5
