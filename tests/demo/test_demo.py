"""A shortened `make demo`: data generation, step 1, mixed, evaluation of both, the table and the picture,
through demo/run.py and train.py with the demo configs (redirected to a temporary folder).

The fixture trains just long enough for zero-shot transfer to show (about 50 s on 2 cores): measured with
200 training and 20 test images, 300 step-1 and 200 mixed iterations in 5/5 blocks, the mixed model reached
U-mIoU 0.125 / hIoU 0.193 with seed 0 (0.130 / 0.208 with seed 1), step 1 U-mIoU 0; with 40/30 iterations
U-mIoU was only 0.016-0.036, so the floors below can tell transfer from chance."""
import json
import os

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

import train
from demo import run as run_demo
from demo import seeds as demo_seeds
from libs.config import load_config
from tests.e2e_config import ROOT
from tools import predict

pytestmark = pytest.mark.slow   # subprocess runs of train.py / torchrun / the demo

UNSEEN = {16, 17, 18, 19, 20}
N_TRAIN, N_TEST, STEP1_ITERS, MIXED_ITERS = 200, 20, 300, 200
# U-mIoU of the mixed model must reach this: about half the measured 0.125, far above the 0.016-0.036 of a
# model trained too briefly to transfer.
U_MIOU_FLOOR = 0.06
# demo.seeds is checked for its bookkeeping, not for transfer: short runs on the fixture's data
SHORT = ["--n_train", str(N_TRAIN), "--n_test", str(N_TEST), "--step1_iters", "40", "--mixed_iters", "30",
         "--device", "cpu"]


def redirected(name, tmp, **changes):
    data = load_config(os.path.join(ROOT, "configs", name)).to_dict()
    data.update(ROOT=str(tmp / "data" / "demo"), datadir=str(tmp / "data"), save_path=str(tmp / "Results"),
                NUM_WORKERS=0, **changes)
    path = tmp / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    step1 = redirected("demo.yaml", tmp)
    mixed = redirected("demo_finetune.yaml", tmp, interval_step1=5, interval_step2=5)
    out = tmp / "out"
    scores = run_demo.main(["--config", step1, "--finetune_config", mixed, "--out", str(out), "--n_train",
                            str(N_TRAIN), "--n_test", str(N_TEST), "--step1_iters", str(STEP1_ITERS),
                            "--mixed_iters", str(MIXED_ITERS), "--device", "cpu"])
    return tmp, out, scores


def test_demo_data_is_written_in_the_real_layout(demo):
    tmp, _, _ = demo
    root = tmp / "data" / "demo"
    assert len(os.listdir(root / "images" / "train")) == N_TRAIN
    assert len(os.listdir(root / "annotations" / "val")) == N_TEST
    assert np.load(root / "split" / "novel_cls.npy").tolist() == sorted(UNSEEN)


def test_step1_cannot_see_unseen_classes_and_mixed_segments_them(demo):
    _, out, scores = demo
    for stage in ("step1", "mixed"):
        for key in ("hIoU", "mIoU", "pixel_acc", "mean_acc", "S-mIoU", "U-mIoU"):
            assert scores[stage][key] is not None and np.isfinite(scores[stage][key]), (stage, key)
        assert json.load(open(out / f"scores_{stage}.json"))["mIoU"] == scores[stage]["mIoU"]
    # step 1's classifier never saw an unseen class: not one unseen pixel is right
    assert scores["step1"]["U-mIoU"] == 0 and scores["step1"]["hIoU"] == 0
    # the mixed schedule's classifier, trained on features generated from word embeddings, segments them
    assert scores["mixed"]["U-mIoU"] >= U_MIOU_FLOOR, scores["mixed"]["U-mIoU"]
    assert scores["mixed"]["hIoU"] > 0 and scores["mixed"]["S-mIoU"] > 0


def unseen_pixels(folder):
    return sum(int(np.isin(np.array(Image.open(folder / f)), list(UNSEEN)).sum()) for f in os.listdir(folder))


def test_mixed_predicts_unseen_classes(demo):
    _, out, _ = demo
    assert len(os.listdir(out / "predictions_mixed")) == N_TEST
    assert unseen_pixels(out / "predictions_mixed") > unseen_pixels(out / "predictions_step1")
    assert unseen_pixels(out / "predictions_mixed") > 0


def test_demo_writes_the_picture_and_the_side_by_side_table(demo):
    _, out, _ = demo
    picture = np.array(Image.open(out / "predictions.png"))
    assert picture.ndim == 3 and picture.shape[0] > 6 * 64 and picture.shape[1] > 4 * 64
    summary = (out / "summary.txt").read_text()
    assert "step1" in summary and "mixed" in summary and "U-mIoU" in summary and "hIoU" in summary


def test_seeds_script_summarises_both_modes_over_training_seeds(demo):
    tmp, out, scores = demo
    seeds_out = tmp / "seeds"
    entries = demo_seeds.main(["--seeds", "0", "1", "--config", str(tmp / "demo.yaml"), "--finetune_config",
                               str(tmp / "demo_finetune.yaml"), "--out", str(seeds_out), *SHORT])
    assert [(e["stage"], e["eval_mode"]) for e in entries] == [
        ("step1", "feature"), ("step1", "full"), ("mixed", "feature"), ("mixed", "full")]
    assert all(len(e["files"]) == 2 and e["scores"]["hIoU"]["n"] == 2 for e in entries)
    runs = {s: json.load(open(seeds_out / f"seed{s}" / "scores_mixed.json")) for s in (0, 1)}
    # the data are the same (data seed 0, already complete) and training is deterministic: seed 0 repeats the demo
    again = run_demo.main(["--config", str(tmp / "demo.yaml"), "--finetune_config", str(tmp / "demo_finetune.yaml"),
                           "--out", str(tmp / "again"), "--experimentid", "again", *SHORT])
    assert runs[0]["mIoU"] == again["mixed"]["mIoU"] and runs[0]["U-mIoU"] == again["mixed"]["U-mIoU"]
    assert runs[0]["mIoU"] != scores["mixed"]["mIoU"]   # 40/30 iterations, not the fixture's
    assert runs[1]["mIoU"] != runs[0]["mIoU"]
    full = json.load(open(seeds_out / "seed1" / "scores_mixed_full.json"))
    assert full["eval_mode"] == "full" and "freqw_acc_harmonic" in full
    mixed_full = entries[3]["scores"]["mIoU"]
    assert mixed_full["min"] <= mixed_full["mean"] <= mixed_full["max"] and mixed_full["std"] is not None
    summary = (seeds_out / "summary.md").read_text()
    assert "### mixed, eval_mode full" in summary and "| hIoU |" in summary
    assert "| score | step1, feature | step1, full | mixed, feature | mixed, full |" in summary
    u = entries[2]["scores"]["U-mIoU"]
    assert f"| U-mIoU | {entries[0]['scores']['U-mIoU']['mean']:.4f}" in summary and f"{u['mean']:.4f} ± " in summary
    assert len(os.listdir(seeds_out / "seed1" / "predictions_mixed_full")) == N_TEST


def test_predict_segments_the_demo_test_images_and_other_images(demo):
    """tools/predict.py on the demo's mixed model: the test images get exactly the labels of --val --eval_mode
    full, and images of other sizes and formats made from them are segmented at their own size."""
    tmp, out, _ = demo
    model = tmp / "Results" / "demo" / "0" / "models_transfer" / ("%08d.pth" % MIXED_ITERS)
    val_dir = tmp / "data" / "demo" / "images" / "val"
    train.main(["--config", str(tmp / "demo_finetune.yaml"), "--init_model", str(model), "--val", "--eval_mode",
                "full", "--results_json", str(tmp / "full.json"), "--save_predictions", str(tmp / "full"),
                "--device", "cpu"])
    mine = tmp / "mine"
    mine.mkdir()
    images = [cv2.imread(str(val_dir / name)) for name in sorted(os.listdir(val_dir))[:4]]
    cv2.imwrite(str(mine / "tiled.jpg"), cv2.resize(np.vstack([np.hstack(images[:2]), np.hstack(images[2:])]),
                                                    (200, 150)))
    cv2.imwrite(str(mine / "wide.png"), cv2.resize(images[0], (300, 90)))
    predict.main(["--config", str(tmp / "demo_finetune.yaml"), "--checkpoint", str(model), str(val_dir), str(mine),
                  "--out", str(tmp / "predict"), "--device", "cpu"])
    for name in sorted(os.listdir(val_dir)):
        stem = os.path.splitext(name)[0]
        assert np.array_equal(np.array(Image.open(tmp / "predict" / f"{stem}.png")),
                              np.array(Image.open(tmp / "full" / f"{stem}.png"))), stem
    assert np.array(Image.open(tmp / "predict" / "tiled.png")).shape == (150, 200)
    assert np.array(Image.open(tmp / "predict" / "wide.png")).shape == (90, 300)
    assert (tmp / "predict" / "overlay" / "tiled.png").is_file()
