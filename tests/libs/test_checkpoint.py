import hashlib
import json
import logging
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from libs.checkpoint import (
    UnsafeCheckpointError,
    atomic_save,
    export_original,
    load_model_weights,
    original_to_ours,
    ours_to_original,
    prepare_snapshot_dir,
    read_checkpoint,
    save_checkpoint,
    snapshot,
    snapshot_iterations,
    trust_checkpoints,
)
from libs.engine.rng import rng_state
from libs.io import OutputError, log
from models.cagnet import build_cagnet
from tests.e2e_config import ROOT

# Names, shapes and dtypes of every tensor in the authors' released checkpoints (no values), per dataset.
MANIFEST = os.path.join(ROOT, "tests", "data", "official_checkpoint_manifest.json")
DATASETS = {"voc12": (15, 5, 21), "context": (29, 4, 34), "cocostuff": (167, 15, 183)}


def manifest():
    return json.load(open(MANIFEST))


def manifest_state_dict(entries, prefix=""):
    """Zero-cost tensors with the manifest's names, shapes and dtypes (expanded scalars)."""
    return {prefix + e["name"]: torch.zeros((), dtype=getattr(torch, e["dtype"])).expand(e["shape"])
            for e in entries}


def meta_model(seen, unseen, outputs):
    with torch.device("meta"):
        return build_cagnet(torch.zeros(256, 600), torch.zeros(seen + unseen, 600), outputs)


@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.parametrize("prefix", ["", "module."])
def test_released_checkpoint_layout_loads_with_no_missing_or_unexpected_keys(dataset, prefix):
    entries = manifest()["datasets"][dataset]["keys"]
    model = meta_model(*DATASETS[dataset])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # copying into meta tensors is a no-op by design here
        report = load_model_weights(model, {"iteration": 40000, "state_dict": manifest_state_dict(entries, prefix)})
    assert report.missing == [] and report.unexpected == []
    assert report.kind == "CaGNet checkpoint" and report.iteration == 40000
    # and the export of our model writes exactly the manifest's names, shapes and order
    exported = ours_to_original(model.state_dict())
    assert [(k, list(v.shape)) for k, v in exported.items()] == [(e["name"], e["shape"]) for e in entries]


def test_bare_init_weights_load_non_strict_and_report_the_rest():
    entries = [e for e in manifest()["datasets"]["voc12"]["keys"] if e["name"].startswith("back.scale.layer")]
    weights = manifest_state_dict(entries)
    weights["back.scale.layer1.conv1.conv.weight"] = torch.full((64, 3, 7, 7), 0.5)
    weights["some.other.net.weight"] = torch.zeros(3)
    model = build_cagnet(torch.zeros(256, 600), torch.zeros(20, 600), 21, n_blocks=(3, 4, 23, 3))
    report = load_model_weights(model, weights, source="deeplabv2_resnet101_init.pth")
    assert report.kind == "bare state dict"
    assert report.unexpected == ["some.other.net.weight"]
    assert "back.scale.backbone.aspp.stages.c0.weight" in report.missing
    assert "Em_vis.weight" in report.missing and not any("layer" in k for k in report.missing)
    assert torch.all(model.back.scale.backbone.layer1.conv1.conv.weight == 0.5)
    assert "1 unexpected" in report.summary()


def test_shape_mismatch_names_keys_and_shapes():
    entries = manifest()["datasets"]["cocostuff"]["keys"]
    model = meta_model(*DATASETS["voc12"])
    with pytest.raises(ValueError) as err:
        load_model_weights(model, {"iteration": 1, "state_dict": manifest_state_dict(entries)}, source="coco.pth")
    text = str(err.value)
    assert "coco.pth" in text and "dis.cls.weight: file (183, 1024, 1, 1) vs model (21, 1024, 1, 1)" in text
    assert "Em_all.weight: file (182, 600) vs model (20, 600)" in text


def test_strict_checkpoint_with_missing_keys_is_an_error(tiny_model):
    model = tiny_model()
    state = ours_to_original(model.state_dict())
    state.pop("dis.pred.bias")
    with pytest.raises(ValueError, match="dis.pred.bias"):
        load_model_weights(model, {"iteration": 3, "state_dict": state})


@pytest.mark.slow
def test_round_trip_through_snapshot_export_and_tool(tmp_path, tiny_model):
    model = tiny_model(seed=1)
    path = tmp_path / "00000010.pth"
    atomic_save(snapshot(model, 10, training_state={"x": 1}, config={"a": 1}), str(path))
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]
    out = tmp_path / "released.pth"
    subprocess.run([sys.executable, "-m", "tools.export_checkpoint", str(path), str(out)],
                   check=True, capture_output=True, cwd=ROOT)
    exported = read_checkpoint(str(out))
    assert set(exported) == {"iteration", "state_dict"} and exported["iteration"] == 10
    assert "back.scale.layer1.conv1.conv.weight" in exported["state_dict"]
    other = tiny_model(seed=2)
    report = load_model_weights(other, str(out))
    assert report.missing == [] and report.unexpected == []
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k
    assert export_original(exported)["state_dict"].keys() == exported["state_dict"].keys()


def test_key_renaming_is_invertible(tiny_model):
    state = tiny_model().state_dict()
    assert list(original_to_ours(ours_to_original(state))) == list(state)


def test_unreadable_checkpoint_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth"):
        read_checkpoint(str(bad))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_checkpoint(str(tmp_path / "nope.pth"))


# ---- safe loading, checksums, complete models, keep_last ----------------------------------------------------

class _CreatesFile:
    """A pickle payload that creates a file when fully unpickled: the attack a downloaded .pth can carry."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def records():
    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    level = log.level
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    yield seen
    log.removeHandler(handler)
    log.setLevel(level)


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "voc12_ourbest.pth"
    torch.save({"iteration": 1, "state_dict": {"dis.cls.bias": torch.zeros(2)}, "x": _CreatesFile(str(marker))},
               str(evil))
    with pytest.raises(UnsafeCheckpointError) as err:
        read_checkpoint(str(evil))
    text = str(err.value)
    assert str(evil) in text and "io.open" in text and "arbitrary code" in text and "--trust_checkpoint" in text
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError):
        load_model_weights(torch.nn.Linear(2, 2), str(evil))
    assert not marker.exists()


def test_trust_opt_in_reads_a_snapshot_of_an_earlier_version(tmp_path, records):
    legacy = tmp_path / "00000002.pth"   # earlier versions saved numpy's RNG state as numpy's own tuple
    torch.save({"iteration": 2, "state_dict": {"w": torch.ones(2)},
                "training_state": {"rng": {"numpy": np.random.get_state()}}}, str(legacy))
    with pytest.raises(UnsafeCheckpointError, match="numpy._core.multiarray._reconstruct"):
        read_checkpoint(str(legacy))
    assert read_checkpoint(str(legacy), trust=True)["iteration"] == 2
    try:
        trust_checkpoints(True)
        assert read_checkpoint(str(legacy))["training_state"]["rng"]["numpy"][0] == "MT19937"
    finally:
        trust_checkpoints(False)
    assert any("--trust_checkpoint: loading" in r.getMessage() and r.levelno == logging.WARNING for r in records)


def test_every_read_logs_the_files_sha256(tmp_path, records):
    path = tmp_path / "init.pth"
    torch.save({"back.scale.conv1.weight": torch.ones(2)}, str(path))
    read_checkpoint(str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert f"reading {path} (sha256 {digest})" in [r.getMessage() for r in records]


def test_our_snapshots_hold_only_what_weights_only_loads(tmp_path, tiny_model):
    model = tiny_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.dis.cls.bias.grad = torch.ones_like(model.dis.cls.bias)
    optimizer.step()
    state = {"trainer": {"optimizers": {"dis": optimizer.state_dict()}}, "rng": rng_state(), "run": {"seed": 3}}
    path = tmp_path / "00000005.pth"
    atomic_save(snapshot(model, 5, state, {"dataset": "voc12", "IMAGE": {"SIZE": {"BASE": 513}}}), str(path))
    loaded = torch.load(str(path), weights_only=True)
    assert loaded["iteration"] == 5 and loaded["training_state"]["run"] == {"seed": 3}


def _bare(model, keep):
    return {k: v for k, v in ours_to_original(model.state_dict()).items() if keep(k)}


def test_val_needs_every_tensor_that_predictions_use(tiny_model):
    model = tiny_model()
    backbone_only = _bare(model, lambda k: k.startswith("back."))
    with pytest.raises(ValueError) as err:
        load_model_weights(tiny_model(), backbone_only, "deeplabv2_resnet101_init.pth", purpose="evaluate")
    text = str(err.value)
    assert "deeplabv2_resnet101_init.pth: 6 tensors that predictions use are not in the file" in text
    assert "dis.fc.conv.weight" in text and "random weights" in text
    # the generator and the embedding tables are not needed to predict
    predicting = _bare(model, lambda k: k.startswith(("back.", "dis.")))
    report = load_model_weights(tiny_model(seed=5), predicting, "predict.pth", purpose="evaluate")
    assert sorted(report.missing) == sorted(k for k in model.state_dict() if k.startswith(("gen.", "Em_")))


def test_training_warns_when_the_init_sets_most_tensors_unset(tiny_model, records):
    model = tiny_model()
    load_model_weights(tiny_model(), _bare(model, lambda k: k.startswith("back.")), "init.pth", purpose="train")
    assert not [r for r in records if r.levelno >= logging.WARNING]
    load_model_weights(tiny_model(), _bare(model, lambda k: k.startswith("dis.")), "dis.pth", purpose="train")
    warning = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and warning[0].startswith(
        "dis.pth sets only 6 of the model's 129 tensors (word-embedding tables not counted); the other 123 "
        "(gen.mlp.0.conv.weight")


@pytest.mark.parametrize("purpose", [None, "train", "evaluate"])
def test_a_state_dict_sharing_no_key_with_the_model_is_always_an_error(tiny_model, purpose):
    foreign = {"fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}
    with pytest.raises(ValueError, match=r"resnet18.pth: the bare state dict shares no key with the model \(2 keys "
                                         r"such as fc.weight, fc.bias; the model has 131"):
        load_model_weights(tiny_model(), foreign, "resnet18.pth", purpose=purpose)


def _snapshots(folder, iterations):
    for it in iterations:
        atomic_save({"iteration": it, "state_dict": {}}, os.path.join(folder, "%08d.pth" % it))


def test_keep_last_deletes_the_oldest_after_a_successful_save(tmp_path, records):
    _snapshots(str(tmp_path), [2, 4, 6])
    (tmp_path / "best.pth").write_bytes(b"not a snapshot name: never deleted")
    removed = save_checkpoint({"iteration": 8, "state_dict": {}}, str(tmp_path / "00000008.pth"), keep_last=2)
    assert [os.path.basename(p) for p in removed] == ["00000002.pth", "00000004.pth"]
    assert sorted(os.listdir(tmp_path)) == ["00000006.pth", "00000008.pth", "best.pth"]
    assert "keep_last 2: removed 00000002.pth, 00000004.pth" in [r.getMessage() for r in records]
    assert save_checkpoint({"iteration": 10, "state_dict": {}}, str(tmp_path / "00000010.pth")) == []  # 0: keep all
    assert len(snapshot_iterations(str(tmp_path))) == 3


def test_keep_last_after_resuming_at_an_earlier_snapshot_keeps_the_later_ones(tmp_path):
    _snapshots(str(tmp_path), [2, 4, 6, 8])
    save_checkpoint({"iteration": 4, "state_dict": {}}, str(tmp_path / "00000004.pth"), keep_last=1)
    assert snapshot_iterations(str(tmp_path)) == [4, 6, 8]   # 6 and 8 get overwritten as the resumed run goes on


def test_prepare_snapshot_dir_checks_and_cleans(tmp_path):
    folder = tmp_path / "models"
    prepare_snapshot_dir(str(folder))
    (folder / ".tmp-abc.pth").write_bytes(b"half a checkpoint")
    prepare_snapshot_dir(str(folder))
    assert os.listdir(folder) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=f"checkpoint folder {tmp_path / 'file'} is a file"):
        prepare_snapshot_dir(str(tmp_path / "file"))
