"""End to end through the command line: step1 -> mixed -> st -> st_mixed -> --val on a tiny dataset in the
real layout with a tiny model, plus exact resume and the clear errors."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from libs.metrics import SCORE_KEYS
from tests.datagen import write_dataset
from tests.e2e_config import ROOT, write_tiny_config

pytestmark = pytest.mark.slow   # subprocess runs of train.py / torchrun / the demo


def run(*args, expect_ok=True):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    if expect_ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    toy = write_dataset(str(tmp / "data"), n_train=6, n_test=3, image_size=[(40, 56), (60, 48)])
    results = str(tmp / "Results")
    exp = os.path.join(results, toy.name, "0")
    cfg = {
        "step1": write_tiny_config(str(tmp / "step1.yaml"), "voc12", toy, results, ITER_MAX=6, snapshot=3),
        "mixed": write_tiny_config(str(tmp / "mixed.yaml"), "voc12_finetune", toy, results, ITER_MAX_TRANSFER=8,
                                   snapshot=4, interval_step1=2, interval_step2=2,
                                   init_model=os.path.join(exp, "models", "00000006.pth")),
        "st": write_tiny_config(str(tmp / "st.yaml"), "configs_st_voc12", toy, results, ITER_MAX_ST=4, snapshot=2),
        "st_mixed": write_tiny_config(str(tmp / "st_mixed.yaml"), "configs_st_transfer_voc12", toy, results,
                                      ITER_MAX_ST_TRANSFER=4, snapshot=4, interval_step1=1, interval_step2=1),
    }
    outputs = {"step1": run("--config", cfg["step1"], "--schedule", "step1", "--seed", "1").stdout}
    outputs["mixed"] = run("--config", cfg["mixed"], "--schedule", "mixed").stdout
    outputs["st"] = run("--config", cfg["st"], "--schedule", "st", "--init_model",
                        os.path.join(exp, "models_transfer", "00000008.pth")).stdout
    outputs["st_mixed"] = run("--config", cfg["st_mixed"], "--schedule", "st_mixed", "--init_model",
                              os.path.join(exp, "models_st", "00000004.pth")).stdout
    pred_dir = str(tmp / "pred")
    json_path = str(tmp / "scores.json")
    outputs["val"] = run("--config", cfg["step1"], "--init_model",
                         os.path.join(exp, "models_st_transfer", "00000004.pth"), "--val",
                         "--save_predictions", pred_dir, "--results_json", json_path).stdout
    return dict(tmp=tmp, toy=toy, exp=exp, cfg=cfg, out=outputs, pred_dir=pred_dir, json=json_path,
                results=results)


def test_output_layout_matches_the_original(pipeline):
    exp = pipeline["exp"]
    expected = {
        "models": ["00000003.pth", "00000006.pth"], "models_transfer": ["00000004.pth", "00000008.pth"],
        "models_st": ["00000002.pth", "00000004.pth"], "models_st_transfer": ["00000004.pth"],
    }
    for folder, files in expected.items():
        assert sorted(os.listdir(os.path.join(exp, folder))) == files
    for name in ("configs.yaml", "configs_transfer.yaml", "configs_st.yaml", "configs_st_transfer.yaml",
                 "logs.txt", "logs_transfer.txt", "logs_st.txt", "logs_st_transfer.txt"):
        assert os.path.isfile(os.path.join(exp, name)), name
    assert os.path.isfile(os.path.join(pipeline["results"], pipeline["toy"].name, "logs_test.txt"))
    events = [f for _, _, fs in os.walk(os.path.join(exp, "tensorboard")) for f in fs]
    assert len(events) == 4 and all(f.startswith("events.out.tfevents") for f in events)


def test_checkpoints_hold_original_keys_and_training_state(pipeline):
    ckpt = torch.load(os.path.join(pipeline["exp"], "models", "00000006.pth"), weights_only=False)
    assert ckpt["iteration"] == 6
    assert "back.scale.layer1.conv1.conv.weight" in ckpt["state_dict"]
    assert "back.scale.contextuallocalmu.conv.weight" in ckpt["state_dict"]
    state = ckpt["training_state"]
    # num_pixels is the trainer's own state (it moved there from the top level of training_state)
    assert set(state) == {"trainer", "stream", "rng", "rng_ranks", "run", "schedule"}
    # the run-defining inputs beyond the config: a resume restores them (docs/method.md §8.5)
    assert state["run"] == {"seed": 1, "amp": "off", "channels_last": False, "world_size": 1, "init_model": None,
                            "eval_mode": "feature", "calibration": 0.0}
    assert len(state["rng_ranks"]) == 1 and torch.equal(state["rng_ranks"][0]["torch"], state["rng"]["torch"])
    assert state["trainer"]["schedulers"]["dis"]["last_iter"] == 6
    assert state["trainer"]["num_pixels"] == 2 * 7 * 7           # crop 49 -> 7x7 features, batch 2
    assert ckpt["config"]["dataset"] == pipeline["toy"].name


def test_logs_contain_loss_lines_lrs_and_test_results(pipeline):
    log = open(os.path.join(pipeline["exp"], "logs.txt")).read()
    assert "iteration 0: lr dis 0.00025, gen 0.0002, back 0.00025" in log
    assert "[step1 step1] iter 2/6 G_GAN" in log and "cls_real" in log and "KLD" in log
    assert log.count("Test results:") == 2
    mixed = open(os.path.join(pipeline["exp"], "logs_transfer.txt")).read()
    assert "[mixed step1] iter 2/8" in mixed and "[mixed step2] iter 4/8 cls_fake" in mixed
    assert "iteration 0: lr dis 5e-05, gen 5e-05, back 0" in mixed


def test_val_prints_table_writes_json_and_prediction_pngs(pipeline):
    out = pipeline["out"]["val"]
    for row in ("hIoU", "mIoU", "pixel acc.", "mean acc.", "S-mIoU", "U-mIoU"):
        assert row in out
    scores = json.load(open(pipeline["json"]))
    assert set(scores) >= {"hIoU", "mIoU", "pixel_acc", "mean_acc", "S-mIoU", "U-mIoU", "class_iou"}
    toy = pipeline["toy"]
    assert list(scores["class_iou"]) == [toy.class_names[i] for i in toy.seen + toy.unseen]
    for key in ("mIoU", "pixel_acc", "S-mIoU"):
        assert 0.0 <= scores[key] <= 1.0
    u = [scores["class_iou"][toy.class_names[i]] for i in toy.unseen]
    expected_u = np.nanmean([np.nan if v is None else v for v in u]) if any(v is not None for v in u) else None
    if expected_u is not None:
        assert scores["U-mIoU"] == pytest.approx(expected_u)
    stems = sorted(os.listdir(pipeline["pred_dir"]))
    assert stems == sorted(f"{s}.png" for _, s in toy.test_entries)
    for name in stems:
        pred = np.array(Image.open(os.path.join(pipeline["pred_dir"], name)))
        assert pred.shape == (9, 9)                     # 65x65 input -> 9x9, the metric resolution
        assert set(np.unique(pred)) <= set(toy.seen + toy.unseen + [255])


def test_resume_continues_exactly(pipeline):
    exp = pipeline["exp"]
    final = torch.load(os.path.join(exp, "models_transfer", "00000008.pth"), weights_only=False)
    os.remove(os.path.join(exp, "models_transfer", "00000008.pth"))
    run("--config", pipeline["cfg"]["mixed"], "--schedule", "mixed", "--resume_from", "4")
    resumed = torch.load(os.path.join(exp, "models_transfer", "00000008.pth"), weights_only=False)
    for key, value in final["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    assert resumed["training_state"]["stream"] == final["training_state"]["stream"]


def test_bad_invocations_fail_with_clear_messages(pipeline):
    cfg = pipeline["cfg"]
    proc = run("--config", cfg["step1"], "--val", "--resume_from", "3", expect_ok=False)
    assert proc.returncode != 0 and "--val cannot be combined with --resume_from" in proc.stderr
    proc = run("--config", cfg["st"], "--schedule", "st", expect_ok=False)
    assert proc.returncode == 2 and "needs a model: pass --init_model" in proc.stderr
    proc = run("--config", cfg["step1"], "--schedule", "mixed", expect_ok=False)
    assert proc.returncode == 2 and "ITER_MAX_TRANSFER" in proc.stderr
    proc = run("--config", cfg["step1"], "--init_model", "missing.pth", "--val", expect_ok=False)
    assert proc.returncode != 0 and "missing.pth" in proc.stderr
    proc = run("--config", cfg["step1"], "--schedule", "step1", "--resume_from", "5", expect_ok=False)
    assert proc.returncode == 2 and "00000005.pth" in proc.stderr
    proc = run("--config", cfg["step1"], "--val", "--save_colour", expect_ok=False)
    assert proc.returncode == 2 and "--save_colour needs --save_predictions" in proc.stderr
    proc = run("--config", cfg["step1"], "--val", "--eval_mode", "native", expect_ok=False)
    assert proc.returncode == 2 and "invalid choice: 'native'" in proc.stderr


def test_val_full_mode_writes_all_scores_the_class_csv_and_colour_pictures(pipeline):
    tmp, toy = pipeline["tmp"], pipeline["toy"]
    model = os.path.join(pipeline["exp"], "models_transfer", "00000008.pth")
    json_path, pred_dir = str(tmp / "full.json"), str(tmp / "pred-full")
    out = run("--config", pipeline["cfg"]["step1"], "--init_model", model, "--val", "--eval_mode", "full",
              "--results_json", json_path, "--save_predictions", pred_dir, "--save_colour").stdout
    assert "(eval_mode full):" in out and "freq.-weighted IoU" in out and "hIoU" in out
    scores = json.load(open(json_path))
    assert scores["eval_mode"] == "full" and scores["checkpoint"] == model
    assert set(SCORE_KEYS) <= set(scores) and list(scores["class_acc"]) == list(scores["class_iou"])
    names = [toy.class_names[i] for i in toy.seen + toy.unseen]
    test_of_raw = {raw: i for i, raw in enumerate(toy.seen + toy.unseen)}
    gt_pixels = np.zeros(len(names), np.int64)
    for _, stem in toy.test_entries:              # the raw labels at their original sizes
        for raw, count in zip(*np.unique(toy.labels[stem], return_counts=True)):
            if int(raw) in test_of_raw:
                gt_pixels[test_of_raw[int(raw)]] += count
    rows = list(csv.DictReader(open(str(tmp / "full_classes.csv"))))
    assert [r["class"] for r in rows] == names
    assert [r["split"] for r in rows] == ["seen"] * len(toy.seen) + ["unseen"] * len(toy.unseen)
    assert [int(r["gt_pixels"]) for r in rows] == gt_pixels.tolist()
    assert sum(int(r["predicted_pixels"]) for r in rows) <= gt_pixels.sum()
    for row in rows:
        iou = scores["class_iou"][row["class"]]
        assert (row["IoU"] == "nan") if iou is None else float(row["IoU"]) == pytest.approx(iou, abs=1e-6)
    for _, stem in toy.test_entries:
        pred = np.array(Image.open(os.path.join(pred_dir, f"{stem}.png")))
        assert pred.shape == toy.labels[stem].shape           # full resolution
        assert set(np.unique(pred)) <= set(toy.seen + toy.unseen + [255])
        colour = np.array(Image.open(os.path.join(pred_dir, "colour", f"{stem}.png")))
        assert colour.shape == pred.shape + (3,)
        assert os.path.isfile(os.path.join(pred_dir, "overlay", f"{stem}.png"))


def test_two_process_data_parallel_run_on_cpu_trains_the_one_process_model(pipeline, tmp_path):
    """torchrun with 2 gloo processes and BATCH_SIZE.TRAIN 2 (the global batch: one image per rank) writes the
    checkpoint one process writes with batch 2 (docs/method.md §8.6). One float32 iteration, |Δ| <= 5e-6 (measured
    5e-7; the update itself moves weights by up to 7e-3): the convolutions round differently for batches of 1 and
    2 images, which longer float32 runs amplify (tests/libs/engine/test_distributed.py compares several step-1
    and mixed iterations in float64, the ranks with each other and the edge cases). Every network uses SGD here:
    Adam's first step is lr * sign(gradient), which turns a last-bit difference of a near-zero gradient entry into
    a step of 2 lr, so it would compare the rounding, not the computation."""
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    checkpoints = {}
    for world in (1, 2):
        results = str(tmp_path / f"Results{world}")
        cfg = write_tiny_config(str(tmp_path / f"ddp{world}.yaml"), "voc12", pipeline["toy"], results, ITER_MAX=1,
                                snapshot=1, dis_opt__OPTIMIZER="sgd", gen_opt__OPTIMIZER="sgd")
        if world == 1:
            run("--config", cfg, "--schedule", "step1", "--device", "cpu")
        else:
            proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29517",
                                   os.path.join(ROOT, "train.py"), "--config", cfg, "--schedule", "step1",
                                   "--multigpus", "--ngpu", "2", "--device", "cpu"], capture_output=True, text=True,
                                  cwd=ROOT, timeout=300)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        checkpoints[world] = torch.load(os.path.join(results, pipeline["toy"].name, "0", "models", "00000001.pth"),
                                        weights_only=False)
    one, two = checkpoints[1], checkpoints[2]
    assert two["iteration"] == 1
    assert two["training_state"]["stream"] == one["training_state"]["stream"]      # global items
    assert two["training_state"]["run"]["world_size"] == 2
    for key, value in one["state_dict"].items():
        if value.is_floating_point():
            assert torch.allclose(two["state_dict"][key], value, rtol=0, atol=5e-6), key


def test_two_process_periodic_test_and_val_are_sharded_and_equal_one_process(pipeline, tmp_path):
    """Training with the periodic test sharded over 2 processes (config eval_mode full), then --val under torchrun:
    the scores equal a single process's."""
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cfg = write_tiny_config(str(tmp_path / "ddp.yaml"), "voc12", pipeline["toy"], str(tmp_path / "Results"),
                            ITER_MAX=4, snapshot=4, eval_mode="full")

    def torchrun_train(*args):
        proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29517",
                               os.path.join(ROOT, "train.py"), "--config", cfg, "--multigpus", "--ngpu", "2",
                               "--device", "cpu", *args], capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    torchrun_train("--schedule", "step1")
    exp = tmp_path / "Results" / pipeline["toy"].name / "0"
    ckpt = torch.load(str(exp / "models" / "00000004.pth"), weights_only=False)
    assert ckpt["iteration"] == 4
    # BATCH_SIZE.TRAIN 2 is the global batch: 4 iterations read at least 8 of the 6 training images (more when a
    # batch without visible pixels is skipped), i.e. into epoch 1; the position counts global items
    stream = ckpt["training_state"]["stream"]
    assert stream["epoch"] == 1 and 2 <= stream["position"] <= 6

    single, sharded = str(tmp_path / "single.json"), str(tmp_path / "sharded.json")
    run("--config", cfg, "--init_model", str(exp / "models" / "00000004.pth"), "--val", "--results_json", single)
    torchrun_train("--init_model", str(exp / "models" / "00000004.pth"), "--val", "--results_json", sharded)
    single_scores, sharded_scores = json.load(open(single)), json.load(open(sharded))
    assert single_scores["eval_mode"] == "full" and single_scores == sharded_scores
    assert open(tmp_path / "single_classes.csv").read() == open(tmp_path / "sharded_classes.csv").read()
    log = open(exp / "logs.txt").read()
    assert log.count("Test results: eval_mode full") == 1     # the periodic test at the snapshot, rank 0 only
    for key in ("hIoU", "mIoU", "pixel_acc", "freqw_acc_unseen"):
        value = single_scores[key]
        assert f"{key}: {float('nan') if value is None else value:.4f}" in log, key


def test_multigpus_without_torchrun_is_a_clear_error(pipeline):
    proc = run("--config", pipeline["cfg"]["step1"], "--multigpus", "--ngpu", "2", expect_ok=False)
    assert proc.returncode == 2 and "torchrun --nproc_per_node" in proc.stderr


def test_bn_calibration_does_not_consume_training_batches(pipeline, tmp_path):
    cfg = write_tiny_config(str(tmp_path / "calib.yaml"), "voc12", pipeline["toy"], str(tmp_path / "Results"),
                            ITER_MAX=2, snapshot=2, **{"back__bn_calibration_batches": 2})
    out = run("--config", cfg, "--schedule", "step1").stdout
    assert "estimated the frozen BatchNorm statistics from 2 training batches" in out
    ckpt = torch.load(str(tmp_path / "Results" / pipeline["toy"].name / "0" / "models" / "00000002.pth"),
                      weights_only=False)
    # training saw the epoch from its first batch on: two batches of 2 (skipped batches would add more)
    assert ckpt["training_state"]["stream"]["epoch"] == 0
    bn = ckpt["state_dict"]["back.scale.layer1.conv1.bn.running_var"]
    assert not torch.allclose(bn, torch.ones_like(bn))


def test_an_error_is_printed_once_on_stderr(pipeline):
    proc = run("--config", "nope.yaml", expect_ok=False)          # before the logger exists
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("nope.yaml") == 1 and proc.stderr.startswith("error: config file 'nope.yaml'")
    proc = run("--config", pipeline["cfg"]["st"], "--schedule", "st", expect_ok=False)   # after it exists
    assert proc.returncode == 2
    assert (proc.stdout + proc.stderr).count("needs a model: pass --init_model") == 1
    assert "needs a model" in proc.stderr


def test_resume_from_a_weights_only_checkpoint_of_the_original_format(pipeline):
    """The original's checkpoints hold {'iteration', 'state_dict'} only: the rates continue at the checkpoint's
    position (the original was off by one) and the optimizers restart, with a warning saying so."""
    import shutil

    from libs.checkpoint import atomic_save, export_original
    source = pipeline["exp"]
    target = os.path.join(os.path.dirname(source), "weights_only")
    shutil.copytree(source, target)
    models = os.path.join(target, "models")
    for name in os.listdir(models):
        os.remove(os.path.join(models, name))
    original = export_original(torch.load(os.path.join(source, "models", "00000003.pth"), weights_only=False))
    assert set(original) == {"iteration", "state_dict"}
    atomic_save(original, os.path.join(models, "00000003.pth"))
    proc = run("--config", pipeline["cfg"]["step1"], "--schedule", "step1", "--experimentid", "weights_only",
               "--resume_from", "3")
    assert "holds no training state: optimizer moments and data order restart" in proc.stdout + proc.stderr
    resumed = torch.load(os.path.join(models, "00000006.pth"), weights_only=False)
    assert resumed["iteration"] == 6
    assert all(s["last_iter"] == 6 for s in resumed["training_state"]["trainer"]["schedulers"].values())
    start = original["state_dict"]["dis.cls.weight"]
    assert not torch.equal(resumed["state_dict"]["dis.cls.weight"], start)      # it trained from the weights
