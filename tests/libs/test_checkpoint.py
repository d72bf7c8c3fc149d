import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from libs.checkpoint import (
    atomic_save,
    export_original,
    load_model_weights,
    original_to_ours,
    ours_to_original,
    read_checkpoint,
    snapshot,
)
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
