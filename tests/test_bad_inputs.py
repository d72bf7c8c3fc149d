"""Bad inputs and faults through the real command line (issue 12): each case asserts the exit status, the message
and that nothing was damaged. Resume with another config, --extend_to, --init_model with --resume_from, a
non-finite loss (stop, and --skip_nonfinite), missing / truncated / out-of-class data (--check_data), SIGTERM
during training (saved, resumable, bit-exact), a second run into an experiment with checkpoints, --val's results
file and run.json."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.datagen import write_dataset
from tests.e2e_config import ROOT, write_tiny_config

pytestmark = pytest.mark.slow   # subprocess runs of train.py

TRAIN = [sys.executable, os.path.join(ROOT, "train.py")]


def train(*args, ok=True):
    proc = subprocess.run([*TRAIN, "--device", "cpu", *args], capture_output=True, text=True, cwd=ROOT, timeout=300)
    if ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def load(path):
    return torch.load(path, weights_only=False)


def listing(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def contents(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in listing(folder)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    toy = write_dataset(str(tmp / "data"), n_train=6, n_test=2, image_size=[(40, 56), (60, 48)])
    results = str(tmp / "Results")
    cfg = write_tiny_config(str(tmp / "step1.yaml"), "voc12", toy, results, ITER_MAX=4, snapshot=2)
    train("--config", cfg, "--experimentid", "base")
    return dict(tmp=tmp, toy=toy, results=results, cfg=cfg, exp=lambda name: os.path.join(results, toy.name, name))


def test_resume_with_another_config_is_refused_and_extend_to_lengthens_the_run(setup):
    tmp, toy, exp = setup["tmp"], setup["toy"], setup["exp"]
    models = os.path.join(exp("base"), "models")
    before = contents(models)
    edited = write_tiny_config(str(tmp / "edited.yaml"), "voc12", toy, setup["results"], ITER_MAX=8, snapshot=2,
                               dis_opt__lr=1e-3, BATCH_SIZE__TRAIN=4)
    proc = train("--config", edited, "--experimentid", "base", "--resume_from", "2", ok=False)
    assert proc.returncode == 2
    assert "differs from the run's config" in proc.stderr and "3 key(s) that change training" in proc.stderr
    assert "ITER_MAX: 4 -> 8" in proc.stderr and "dis_opt.lr: 0.00025 -> 0.001" in proc.stderr
    assert "BATCH_SIZE.TRAIN: 2 -> 4" in proc.stderr and "pass --extend_to N" in proc.stderr
    assert contents(models) == before

    proc = train("--config", setup["cfg"], "--experimentid", "base", "--resume_from", "2", "--init_model",
                 os.path.join(models, "00000002.pth"), ok=False)
    assert proc.returncode == 2 and "--init_model does not apply with --resume_from" in proc.stderr

    # display_interval / log_interval / snapshot may change on resume; --extend_to 6 continues the run past ITER_MAX
    relaxed = write_tiny_config(str(tmp / "relaxed.yaml"), "voc12", toy, setup["results"], ITER_MAX=4, snapshot=3,
                                display_interval=2, log_interval=1)
    train("--config", relaxed, "--experimentid", "base", "--resume_from", "4", "--extend_to", "6")
    assert listing(models) == ["00000002.pth", "00000004.pth", "00000006.pth"]
    assert {k: contents(models)[k] for k in before} == before
    six = load(os.path.join(models, "00000006.pth"))
    assert six["config"]["ITER_MAX"] == 6
    assert six["training_state"]["trainer"]["schedulers"]["back"]["last_iter"] == 6
    resumed = json.load(open(os.path.join(exp("base"), "run.json")))["runs"][-1]
    assert resumed["resumed_from"].endswith("00000004.pth") and len(resumed["resumed_from_sha256"]) == 64
    assert resumed["command"].endswith("--resume_from 4 --extend_to 6")
    proc = train("--config", setup["cfg"], "--experimentid", "base", "--resume_from", "6", "--extend_to", "5",
                 ok=False)
    assert proc.returncode == 2 and "--extend_to must be larger" in proc.stderr


def test_a_second_run_into_an_experiment_is_refused_unless_overwrite_and_val_names_its_results(setup):
    exp = setup["exp"]("base")
    models = os.path.join(exp, "models")
    before = contents(models)
    proc = train("--config", setup["cfg"], "--experimentid", "base", ok=False)
    assert proc.returncode == 2 and "already holds" in proc.stderr and "--overwrite" in proc.stderr
    assert contents(models) == before

    run_json = json.load(open(os.path.join(exp, "run.json")))["runs"]
    first = run_json[0]
    assert first["seed"] == 0 and first["schedule"] == "step1" and first["world_size"] == 1
    assert first["command"].startswith("python train.py --device cpu --config ")
    assert first["init_model"] is None and "torch" in first["packages"] and first["device"].startswith("cpu")
    assert "git_commit" in first

    extra = os.path.join(models, "00000099.pth")
    open(extra, "wb").close()
    train("--config", setup["cfg"], "--experimentid", "base", "--overwrite", "--seed", "3")
    assert listing(models) == ["00000002.pth", "00000004.pth"]
    assert load(os.path.join(models, "00000004.pth"))["training_state"]["run"]["seed"] == 3

    for it in (2, 4):
        train("--config", setup["cfg"], "--experimentid", "base", "--val", "--init_model",
              os.path.join(models, "%08d.pth" % it))
    scores = {it: json.load(open(os.path.join(exp, "results_val_models_%08d.json" % it))) for it in (2, 4)}
    assert scores[2]["checkpoint"].endswith("00000002.pth") and scores[4]["checkpoint"].endswith("00000004.pth")


def test_a_non_finite_loss_stops_the_run_or_is_skipped(setup):
    """Learning rates of 1e30: iteration 1's update leaves huge (finite) weights, every later loss is NaN."""
    tmp, toy, exp = setup["tmp"], setup["toy"], setup["exp"]
    bad = write_tiny_config(str(tmp / "lr.yaml"), "voc12", toy, setup["results"], ITER_MAX=4, snapshot=1,
                            dis_opt__lr=1e30, gen_opt__lr=1e30, back_opt__lr=1e30)
    proc = train("--config", bad, "--experimentid", "nan", ok=False)
    assert proc.returncode == 3
    assert "error: non-finite loss at iteration 2: G_GAN nan, content nan" in proc.stderr
    models = os.path.join(exp("nan"), "models")
    assert listing(models) == ["00000001.pth"]          # the last good one; nothing non-finite was written
    assert all(torch.isfinite(v).all() for v in load(os.path.join(models, "00000001.pth"))["state_dict"].values()
               if v.is_floating_point())
    proc = train("--config", bad, "--experimentid", "nan-skip", "--skip_nonfinite", "2", ok=False)
    assert proc.returncode == 3 and proc.stderr.count("batch skipped without an update") == 2
    assert "the budget of --skip_nonfinite 2 is spent" in proc.stderr
    assert listing(os.path.join(exp("nan-skip"), "models")) == ["00000001.pth"]


def test_missing_truncated_and_out_of_class_data_are_named_before_training(setup, tmp_path):
    toy = write_dataset(str(tmp_path / "data"), n_train=4, n_test=2, image_size=[(40, 56)])
    results = str(tmp_path / "Results")
    cfg = write_tiny_config(str(tmp_path / "c.yaml"), "voc12", toy, results, ITER_MAX=2, snapshot=2)
    (sub, stem), (sub2, stem2) = toy.train_entries[:2]
    jpeg = os.path.join(toy.root, "images", sub, stem + ".jpg")
    data = open(jpeg, "rb").read()
    open(jpeg, "wb").write(data[:int(len(data) * 0.8)])                  # truncated to 80 %
    label_path = os.path.join(toy.root, "annotations", sub2, stem2 + ".png")
    label = np.array(Image.open(label_path))
    label[0, :3] = 200                                                   # no class of labels_refined.txt
    Image.fromarray(label).save(label_path)
    test_sub, test_stem = toy.test_entries[0]
    missing = os.path.join(toy.root, "images", test_sub, test_stem + ".jpg")
    os.remove(missing)

    proc = train("--config", cfg, ok=False)                              # header check: finds the missing file
    assert proc.returncode == 2 and "the test list" in proc.stderr and "1 missing file(s)" in proc.stderr
    assert f"image {missing} is missing" in proc.stderr
    Image.fromarray(np.zeros((40, 56, 3), np.uint8)).save(missing)
    proc = train("--config", cfg, "--check_data", "deep", ok=False)      # deep: decodes and reads the values
    assert proc.returncode == 2 and "the train list" in proc.stderr and "2 problem(s), 0 missing" in proc.stderr
    assert f"image {jpeg} cannot be decoded (image file is truncated" in proc.stderr
    assert f"annotation {label_path} has values [200]" in proc.stderr
    assert not os.path.exists(os.path.join(results, toy.name, "0", "models"))

    from tools import make_split_list
    split = os.path.join(toy.root, "split", "train_list.npy")
    assert make_split_list.main(["--verify", split, "--root", toy.root]) == 0
    assert make_split_list.main(["--verify", split, "--root", toy.root, "--deep"]) == 1


def test_sigterm_saves_a_checkpoint_prints_the_resume_command_and_the_resume_is_exact(setup):
    toy, tmp, exp = setup["toy"], setup["tmp"], setup["exp"]
    cfg = write_tiny_config(str(tmp / "long.yaml"), "voc12", toy, setup["results"], ITER_MAX=30, snapshot=100)
    train("--config", cfg, "--experimentid", "whole")
    args = ["--device", "cpu", "--config", cfg, "--experimentid", "cut"]
    proc = subprocess.Popen([*TRAIN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:
        if "] iter " in line:
            assert "[step1 step1] iter 1/30 G_GAN" in line
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, out[-2000:] + err[-2000:]
    assert "SIGTERM: saving a checkpoint at the next iteration boundary" in err
    lines = err.splitlines()
    command = lines[lines.index(next(x for x in lines if x.endswith("resume with:"))) + 1].split()
    assert command[:2] == ["python", "train.py"] and command[-2] == "--resume_from"
    stopped = int(command[-1])
    assert 1 <= stopped < 30
    models = os.path.join(exp("cut"), "models")
    assert listing(models) == ["%08d.pth" % stopped]
    assert command[2:-2] == args
    train(*command[2:])
    # display_interval 1 prints every iteration (without a terminal too), log_interval 2 writes every second one
    log = open(os.path.join(exp("cut"), "logs.txt")).read()
    assert "[step1 step1] iter 2/30 G_GAN" in log and "iter 1/30" not in log and "iter 29/30" not in log
    a, b = load(os.path.join(exp("whole"), "models", "00000030.pth")), load(os.path.join(models, "00000030.pth"))
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert a["training_state"]["stream"] == b["training_state"]["stream"]
