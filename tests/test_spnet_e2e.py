"""SPNet through train.py on the tiny generated data: train (with gradient accumulation) -> checkpoint with its
method record -> exact resume -> --val (SPNet and SPNet-c rows, JSON with method and all 16 scores) ->
tools/paper_table.py; a CaGNet config refuses the SPNet checkpoint for --val and takes its backbone for training."""
import json
import os
import subprocess
import sys

import pytest
import torch

from libs.metrics import SCORE_KEYS
from tests.datagen import write_dataset
from tests.e2e_config import ROOT, write_tiny_config
from tests.test_resume import assert_same_checkpoint

pytestmark = pytest.mark.slow   # subprocess runs of train.py


def run(*args, ok=True, module=None):
    command = [sys.executable, *(["-m", module] if module else [os.path.join(ROOT, "train.py"), "--device", "cpu"]),
               *args]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_spnet_train_resume_val_and_table(tmp_path):
    toy = write_dataset(str(tmp_path / "data"), n_train=6, n_test=2, image_size=[(40, 56), (60, 48)])
    results = str(tmp_path / "Results")
    # BATCH_SIZE 1 x ITER_SIZE 2: two images per iteration, 3 iterations per epoch
    cfg = write_tiny_config(str(tmp_path / "spnet.yaml"), "spnet_voc12", toy, results, back__n_classes=600,
                            BATCH_SIZE__TRAIN=1, ITER_SIZE=2, ITER_MAX=4, snapshot=2)
    exp = os.path.join(results, toy.name)
    run("--config", cfg, "--experimentid", "whole")
    final = torch.load(os.path.join(exp, "whole", "models", "00000004.pth"), weights_only=False)
    assert final["method"] == "spnet" and final["training_state"]["schedule"] == "step1"
    assert "back.scale.aspp.stages.c0.weight" in final["state_dict"]
    # exact resume
    run("--config", cfg, "--experimentid", "cut", "--max_iter", "2")
    run("--config", cfg, "--experimentid", "cut", "--resume_from", "2")
    assert_same_checkpoint(final, torch.load(os.path.join(exp, "cut", "models", "00000004.pth"), weights_only=False))

    model = os.path.join(exp, "whole", "models", "00000004.pth")
    plain, calibrated = str(tmp_path / "spnet.json"), str(tmp_path / "spnet_c.json")
    assert os.listdir(os.path.join(exp, "whole", "tensorboard", "step1"))
    predictions = str(tmp_path / "predictions")
    run("--config", cfg, "--init_model", model, "--val", "--results_json", plain, "--save_predictions", predictions)
    assert sorted(os.listdir(predictions)) == sorted(f"{stem}.png" for _, stem in toy.test_entries)
    run("--config", cfg, "--init_model", model, "--val", "--calibrate", "0.6", "--results_json", calibrated)
    rows = [json.load(open(p)) for p in (plain, calibrated)]
    for row, gamma in zip(rows, (0.0, 0.6)):
        assert row["method"] == "spnet" and row["schedule"] == "step1" and row["eval_mode"] == "warped"
        assert row["calibration"] == gamma and row["checkpoint"] == model and row["dataset"] == toy.name
        assert all(key in row for key in SCORE_KEYS) and len(SCORE_KEYS) == 16

    table = run(plain, calibrated, "--markdown", str(tmp_path / "t.md"), module="tools.paper_table")
    assert "| SPNet |" in table.stdout and "| SPNet-c |" in table.stdout

    # a CaGNet config: --val refuses the SPNet checkpoint, training takes its backbone
    cagnet = write_tiny_config(str(tmp_path / "cagnet.yaml"), "voc12", toy, results, ITER_MAX=1, snapshot=1,
                               back__n_classes=600, gen__in_dim_mlp=1200, gen__out_dim_mlp=600, dis__in_dim_fc=600)
    proc = run("--config", cagnet, "--init_model", model, "--val", ok=False)
    assert proc.returncode == 2
    assert f"--val: {model} is a spnet checkpoint, but the config has method cagnet" in proc.stderr
    proc = run("--config", cagnet, "--init_model", model, "--experimentid", "from-spnet")
    assert "is a spnet checkpoint and this run trains cagnet" in proc.stderr
    trained = torch.load(os.path.join(exp, "from-spnet", "models", "00000001.pth"), weights_only=False)
    assert trained["method"] == "cagnet"
