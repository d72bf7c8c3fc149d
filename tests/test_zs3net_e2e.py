"""ZS3Net and ZS3Net+ST end to end through train.py on the tiny generated data: step1 -> mixed -> st -> st_mixed
-> --val (JSON with method zs3net), and an exact resume inside stage 2."""
import json
import os

import pytest
import torch

from libs.metrics import SCORE_KEYS
from tests.datagen import write_dataset
from tests.e2e_config import run_train, write_tiny_config

pytestmark = pytest.mark.slow   # subprocess runs of train.py

TINY_ZS3 = {"zs3_noise_dim": 8, "zs3_gen_hidden": 12, "zs3_mmd_samples": 16}


train = run_train


def load(path):
    return torch.load(path, weights_only=False)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zs3")
    toy = write_dataset(str(tmp / "data"), n_train=6, n_test=3, image_size=[(40, 56), (60, 48)])
    results = str(tmp / "Results")
    exp = os.path.join(results, toy.name, "0")
    cfg = {
        "step1": write_tiny_config(str(tmp / "step1.yaml"), "zs3net_voc12", toy, results, ITER_MAX=4, snapshot=2,
                                   **TINY_ZS3),
        "mixed": write_tiny_config(str(tmp / "mixed.yaml"), "zs3net_voc12_finetune", toy, results,
                                   ITER_MAX_TRANSFER=4, snapshot=2,
                                   init_model=os.path.join(exp, "models", "00000004.pth"), **TINY_ZS3),
        "st": write_tiny_config(str(tmp / "st.yaml"), "zs3net_st_voc12", toy, results, ITER_MAX_ST=3,
                                ITER_MAX_ST_TRANSFER=3, snapshot=3, **TINY_ZS3),
    }
    out = {"step1": train("--config", cfg["step1"], "--schedule", "step1").stdout}
    out["mixed"] = train("--config", cfg["mixed"], "--schedule", "mixed").stdout
    out["st"] = train("--config", cfg["st"], "--schedule", "st", "--init_model",
                      os.path.join(exp, "models_transfer", "00000004.pth")).stdout
    out["st_mixed"] = train("--config", cfg["st"], "--schedule", "st_mixed", "--init_model",
                            os.path.join(exp, "models_st", "00000003.pth")).stdout
    json_path = str(tmp / "scores.json")
    out["val"] = train("--config", cfg["step1"], "--init_model",
                       os.path.join(exp, "models_st_transfer", "00000003.pth"), "--val", "--results_json",
                       json_path).stdout
    return dict(tmp=tmp, exp=exp, cfg=cfg, out=out, json=json_path)


def test_every_stage_writes_its_checkpoints_and_logs(pipeline):
    exp = pipeline["exp"]
    for folder, last in (("models", 4), ("models_transfer", 4), ("models_st", 3), ("models_st_transfer", 3)):
        assert os.path.isfile(os.path.join(exp, folder, "%08d.pth" % last)), folder
    log = open(os.path.join(exp, "logs_transfer.txt")).read()
    assert "[mixed step2]" in log and "gen_steps" in log and "n_unseen" in log
    assert "[st step1]" in open(os.path.join(exp, "logs_st.txt")).read()


def test_stage2_checkpoint_keeps_the_stage1_backbone_and_changes_the_classifier(pipeline):
    exp = pipeline["exp"]
    stage1 = load(os.path.join(exp, "models", "00000004.pth"))["state_dict"]
    stage2 = load(os.path.join(exp, "models_transfer", "00000004.pth"))["state_dict"]
    backbone = [k for k in stage1 if k.startswith("back.")]
    assert backbone and all(torch.equal(stage1[k], stage2[k]) for k in backbone)
    assert not torch.equal(stage1["cls.weight"], stage2["cls.weight"])
    assert stage2["cls.weight"].shape[0] == 5            # S + U = 3 + 2, no dead channel
    st = load(os.path.join(exp, "models_st", "00000003.pth"))["state_dict"]
    assert not torch.equal(st["back.scale.layer1.conv1.conv.weight"], stage2["back.scale.layer1.conv1.conv.weight"])


def test_val_writes_json_with_method_zs3net_and_all_scores(pipeline):
    record = json.load(open(pipeline["json"]))
    assert record["method"] == "zs3net" and record["dataset"] == "toy"
    for key in SCORE_KEYS:
        assert 0.0 <= record[key] <= 1.0, key
    assert "zs3net" in pipeline["out"]["val"]


def test_stage2_resumed_from_a_snapshot_writes_the_same_checkpoint(pipeline):
    """The per-class generator draws, dropout and noise come from the saved RNG state: a resume at 2 gives the
    uninterrupted run's checkpoint 4 bit for bit (as tests/test_resume.py checks for CaGNet)."""
    folder = os.path.join(pipeline["exp"], "models_transfer")
    final = load(os.path.join(folder, "00000004.pth"))
    os.remove(os.path.join(folder, "00000004.pth"))
    train("--config", pipeline["cfg"]["mixed"], "--schedule", "mixed", "--resume_from", "2")
    resumed = load(os.path.join(folder, "00000004.pth"))
    for key, value in final["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    assert final["training_state"]["stream"] == resumed["training_state"]["stream"]
    assert torch.equal(final["training_state"]["rng"]["torch"], resumed["training_state"]["rng"]["torch"])
    for net in ("dis", "gen"):
        a = final["training_state"]["trainer"]["optimizers"][net]["state"]
        b = resumed["training_state"]["trainer"]["optimizers"][net]["state"]
        assert all(torch.equal(a[i]["exp_avg" if net == "gen" else "momentum_buffer"],
                               b[i]["exp_avg" if net == "gen" else "momentum_buffer"]) for i in a)

