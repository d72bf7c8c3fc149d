"""tools/calibration_sweep.py: every γ of the one-pass sweep equals `--val --calibrate γ` (evaluate)."""
import json

import pytest
import torch

from libs.checkpoint import atomic_save, snapshot
from libs.config import load_config
from libs.datasets import load_class_splits
from libs.engine.evaluation import evaluate
from libs.engine.methods import get_method
from libs.engine.run import Run, RunOptions
from libs.metrics import SCORE_KEYS
from models.initialization import init_weights
from tests.datagen import write_dataset
from tests.e2e_config import write_tiny_config
from tools import calibration_sweep


@pytest.mark.parametrize("mode", ["feature", "warped"])
def test_sweep_equals_evaluate_per_gamma(tmp_path, mode, capsys):
    toy = write_dataset(str(tmp_path / "data"), n_train=2, n_test=2, image_size=[(40, 56), (60, 48)])
    cfg_path = write_tiny_config(str(tmp_path / "sp.yaml"), "spnet_voc12", toy, str(tmp_path / "R"),
                                 back__n_classes=600, eval_mode=mode)
    cfg = load_config(cfg_path)
    torch.manual_seed(0)
    model = get_method("spnet").build_model(cfg, load_class_splits(toy.datadir, toy.name))
    init_weights(model, "kaiming")
    checkpoint = str(tmp_path / "m.pth")
    atomic_save(snapshot(model, 1, method="spnet"), checkpoint)
    run = Run(cfg, RunOptions(init_model=checkpoint, device="cpu", evaluate_only=True), cfg_path)
    gammas = [0.0, 0.3, 0.9]
    swept = calibration_sweep.sweep(run, gammas)
    for gamma in gammas:
        expected = evaluate(run.model, run._test_loader(), run.splits, run.device, mode=mode, calibration=gamma)
        for key in SCORE_KEYS:
            assert swept[gamma][key] == pytest.approx(expected[key], nan_ok=True), (gamma, key)
    out = tmp_path / "sweep.json"
    assert calibration_sweep.main(["--config", cfg_path, "--init_model", checkpoint, "--device", "cpu",
                                   "--gammas", "0,0.5", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert set(record["scores"]) == {"0", "0.5"} and record["eval_mode"] == mode
    assert "best hIoU" in capsys.readouterr().out
