"""Bad files and failing disks through the real command line (train.py and the tools in a subprocess): a
checkpoint that would run code, an old snapshot that needs the opt-in, an incomplete model for --val, an init file
sharing no key, an output folder that is a file or read-only, a full disk during a save, temporaries of a killed
save, keep_last and the umask. Each asserts the exit code, the message and that nothing was damaged."""
import contextlib
import hashlib
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch

from libs.checkpoint import ours_to_original
from tests.datagen import write_dataset
from tests.e2e_config import ROOT, write_tiny_config

pytestmark = pytest.mark.slow   # subprocess runs of train.py and the tools

def run(*args, module=None, preexec_fn=None):
    command = [sys.executable, *(["-m", module] if module else [os.path.join(ROOT, "train.py")]), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300, preexec_fn=preexec_fn)


def sha256(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


class CreatesFile:
    """Fully unpickled, this creates a file: the attack a downloaded .pth can carry."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A toy dataset, a tiny config (ITER_MAX 4, snapshot 2) and a run stopped after its first snapshot."""
    tmp = str(tmp_path_factory.mktemp("bad_files"))
    toy = write_dataset(os.path.join(tmp, "data"), n_train=4, n_test=2, image_size=[(40, 56)])
    results = os.path.join(tmp, "Results")
    config = write_tiny_config(os.path.join(tmp, "step1.yaml"), "voc12", toy, results, ITER_MAX=4, snapshot=2)
    proc = run("--config", config, "--max_iter", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    exp = os.path.join(results, toy.name, "0")
    snapshot = os.path.join(exp, "models", "00000002.pth")
    checkpoint = torch.load(snapshot, weights_only=True)
    state = checkpoint["state_dict"]
    files = {}

    def save(name, obj):
        files[name] = os.path.join(tmp, name)
        torch.save(obj, files[name])
    marker = os.path.join(tmp, "code_ran")
    save("evil.pth", {"iteration": 2, "state_dict": state, "payload": CreatesFile(marker)})
    legacy = {**checkpoint, "training_state": {**checkpoint["training_state"], "rng": {
        **checkpoint["training_state"]["rng"], "numpy": np.random.get_state()}}}
    save("legacy.pth", legacy)
    save("backbone_only.pth", {k: v for k, v in state.items() if k.startswith("back.")})
    save("classifier_only.pth", {k: v for k, v in state.items() if k.startswith("dis.")})
    save("foreign.pth", {"fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)})
    return dict(tmp=tmp, toy=toy, results=results, config=config, exp=exp, snapshot=snapshot, files=files,
                marker=marker, snapshot_sha=sha256(snapshot), first_run=proc)


def test_undefined_test_scores_are_named_once_and_kept_out_of_tensorboard(base):
    # the base run's 2 test images have no unseen pixel, so the unseen scores are means over no class (nan)
    proc = base["first_run"]
    assert "U-mIoU: nan" in proc.stdout and "NaN or Inf found" not in proc.stderr
    assert "U-mIoU, pixel_acc_unseen, mean_acc_unseen: nan, no test pixel of the classes averaged" in proc.stdout


def experiment_with(base, experiment, checkpoint):
    """Another experiment folder holding the run's config copy and `checkpoint` as its snapshot 2."""
    folder = os.path.join(base["results"], base["toy"].name, experiment)
    os.makedirs(os.path.join(folder, "models"), exist_ok=True)
    shutil.copy(os.path.join(base["exp"], "configs.yaml"), folder)
    shutil.copy(checkpoint, os.path.join(folder, "models", "00000002.pth"))
    return folder


def assert_refused(proc, path):
    err = proc.stderr
    assert proc.returncode != 0, proc.stdout[-2000:] + err[-2000:]
    assert f"checkpoint {path!r} refused" in err and "io.open" in err and "arbitrary code" in err, err[-3000:]
    assert "--trust_checkpoint" in err and "Traceback" not in err


@pytest.mark.parametrize("route", ["val", "init_model", "resume_from", "export", "predict"])
def test_a_checkpoint_that_would_run_code_is_refused_everywhere(base, route):
    evil, config = base["files"]["evil.pth"], base["config"]
    if route == "val":
        proc = run("--config", config, "--init_model", evil, "--val", "--experimentid", "evil_val")
    elif route == "init_model":
        proc = run("--config", config, "--init_model", evil, "--experimentid", "evil_init")
    elif route == "resume_from":
        folder = experiment_with(base, "evil_resume", evil)
        proc = run("--config", config, "--resume_from", "2", "--experimentid", "evil_resume")
        evil = os.path.join(folder, "models", "00000002.pth")
    elif route == "export":
        proc = run(evil, os.path.join(base["tmp"], "exported.pth"), module="tools.export_checkpoint")
        assert not os.path.exists(os.path.join(base["tmp"], "exported.pth"))
    else:
        proc = run("--config", config, "--checkpoint", evil, "--out", os.path.join(base["tmp"], "pred"), "--device",
                   "cpu", os.path.join(base["toy"].root, "images", "val"), module="tools.predict")
    assert_refused(proc, evil)
    assert not os.path.exists(base["marker"])
    if route == "init_model":
        assert not os.path.exists(os.path.join(base["results"], base["toy"].name, "evil_init", "models"))


def test_a_snapshot_of_an_earlier_version_loads_only_with_the_opt_in(base):
    legacy = base["files"]["legacy.pth"]
    args = ("--config", base["config"], "--init_model", legacy, "--val", "--experimentid", "legacy")
    refused = run(*args)
    assert refused.returncode == 2 and "numpy._core.multiarray._reconstruct" in refused.stderr
    trusted = run(*args, "--trust_checkpoint")
    assert trusted.returncode == 0, trusted.stderr[-3000:]
    assert f"--trust_checkpoint: loading {legacy} with full unpickling (it refers to " \
           "numpy._core.multiarray._reconstruct); it could run code" in trusted.stderr
    assert "Test results of" in trusted.stdout


def test_val_logs_the_sha256_of_what_it_evaluates(base):
    proc = run("--config", base["config"], "--init_model", base["snapshot"], "--val", "--experimentid", "sha")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"reading {base['snapshot']} (sha256 {base['snapshot_sha']})" in proc.stdout
    log = os.path.join(base["results"], base["toy"].name, "logs_test.txt")
    assert f"(sha256 {base['snapshot_sha']})" in open(log).read()


def test_val_refuses_a_model_without_its_classifier(base, tmp_path):
    backbone = base["files"]["backbone_only.pth"]
    results = str(tmp_path / "scores.json")
    proc = run("--config", base["config"], "--init_model", backbone, "--val", "--results_json", results)
    assert proc.returncode == 2
    assert f"{backbone}: 6 tensors that predictions use are not in the file (dis.fc.conv.weight" in proc.stderr
    assert not os.path.exists(results)
    # without --init_model: the config's init_model (an ImageNet-style backbone init) is no model to evaluate
    config = write_tiny_config(str(tmp_path / "backbone_init.yaml"), "voc12", base["toy"], base["results"],
                               ITER_MAX=4, snapshot=2, init_model=backbone)
    proc = run("--config", config, "--val", "--results_json", results)
    assert proc.returncode == 2 and "tensors that predictions use are not in the file" in proc.stderr
    assert not os.path.exists(results)


def test_training_from_a_foreign_or_mostly_unset_init(base):
    foreign = base["files"]["foreign.pth"]
    proc = run("--config", base["config"], "--init_model", foreign, "--experimentid", "foreign")
    assert proc.returncode == 2
    assert f"{foreign}: the bare state dict shares no key with the model (2 keys such as fc.weight" in proc.stderr
    classifier = base["files"]["classifier_only.pth"]
    proc = run("--config", base["config"], "--init_model", classifier, "--experimentid", "partial", "--max_iter", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{classifier} sets only 6 of the model's 129 tensors (word-embedding tables not counted); " \
           "the other 123 (gen.mlp.0.conv.weight" in proc.stderr


def test_an_output_folder_that_is_a_file(base, tmp_path):
    blocker = tmp_path / "Results"
    blocker.write_text("precious notes")
    config = write_tiny_config(str(tmp_path / "c.yaml"), "voc12", base["toy"], str(blocker), ITER_MAX=4, snapshot=2)
    proc = run("--config", config)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"error: the log file's folder {blocker / base['toy'].name / '0'} cannot be created: {blocker} is a " \
           f"file, not a folder" in proc.stderr
    assert blocker.read_text() == "precious notes"


@contextlib.contextmanager
def read_only(folder):
    """`folder` made read-only: by its mode, or for root (who ignores modes) as a read-only bind mount."""
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)
        try:
            yield "Permission denied"
        finally:
            os.chmod(folder, 0o755)
        return
    mounted = subprocess.run(["mount", "--bind", folder, folder], capture_output=True).returncode == 0
    if mounted and subprocess.run(["mount", "-o", "remount,bind,ro", folder], capture_output=True).returncode:
        subprocess.run(["umount", folder], capture_output=True)
        mounted = False
    if not mounted:
        pytest.skip("running as root without the right to mount: no way to make a folder read-only")
    try:
        yield "Read-only file system"
    finally:
        subprocess.run(["umount", folder], check=True)


def test_a_read_only_output_folder(base):
    folder = os.path.join(base["tmp"], "read_only")
    os.makedirs(folder)
    config = write_tiny_config(os.path.join(base["tmp"], "ro.yaml"), "voc12", base["toy"], folder, ITER_MAX=4,
                               snapshot=2)
    with read_only(folder) as reason:
        proc = run("--config", config)
        assert os.listdir(folder) == []
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"error: the log file's folder {os.path.join(folder, base['toy'].name, '0')} is not writable: " \
           f"{reason}" in proc.stderr and "Traceback" not in proc.stderr


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(base):
    folder = experiment_with(base, "full", base["snapshot"])
    models = os.path.join(folder, "models")
    size = os.path.getsize(base["snapshot"])

    def small_disk():   # every file this process writes may grow to half a checkpoint: the next save fails
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))
    proc = run("--config", base["config"], "--resume_from", "2", "--experimentid", "full", preexec_fn=small_disk)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    path = os.path.join(models, "00000004.pth")
    assert f"error: could not write {path}: File too large (the disk or quota is full: free space, or point " \
           f"save_path to another disk). Nothing was replaced" in proc.stderr
    assert os.listdir(models) == ["00000002.pth"]                       # no temporary file, no half checkpoint
    assert sha256(os.path.join(models, "00000002.pth")) == base["snapshot_sha"]


def test_stale_temporaries_keep_last_and_the_umask(base, tmp_path):
    config = write_tiny_config(str(tmp_path / "keep.yaml"), "voc12", base["toy"], base["results"], ITER_MAX=4,
                               snapshot=2, keep_last=1)
    models = os.path.join(base["results"], base["toy"].name, "keep", "models")
    os.makedirs(models)
    stale = os.path.join(models, ".tmp-q8x1_2ab.pth")
    with open(stale, "wb") as handle:
        handle.write(b"\0" * 4096)                                      # what a save killed half-way leaves
    proc = run("--config", config, "--experimentid", "keep", preexec_fn=lambda: os.umask(0o027))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"removed {stale} (0.0 MB), left by an interrupted save" in proc.stdout
    assert "keep_last 1: removed 00000002.pth" in proc.stdout
    assert os.listdir(models) == ["00000004.pth"]
    assert stat.S_IMODE(os.stat(os.path.join(models, "00000004.pth")).st_mode) == 0o640
    assert ours_to_original(torch.load(os.path.join(models, "00000004.pth"), weights_only=True)["state_dict"])
