"""demo.table on two rows (CaGNet, CaGNet+ST) with tiny iteration counts: after a shortened `make demo` it reuses
that demo's CaGNet runs, trains the self-training stages, writes table.json in the exact schema, table.md and the
picture; run again it trains nothing; a changed config retrains that stage only."""
import json
import os

import numpy as np
import pytest
import yaml
from PIL import Image

from demo import run as run_demo
from demo import table as demo_table
from libs.config import load_config
from tests.e2e_config import ROOT

pytestmark = pytest.mark.slow   # train.py runs of four stages

CONFIGS = ("demo.yaml", "demo_finetune.yaml", "demo_st.yaml", "demo_st_transfer.yaml")
KEYS = ["method", "hIoU", "mIoU", "pixel_acc", "mean_acc", "S-mIoU", "U-mIoU"]
ITERS = 10


def redirect(tmp, name, **changes):
    data = load_config(os.path.join(ROOT, "configs", name)).to_dict()
    data.update(ROOT=str(tmp / "data" / "demo"), datadir=str(tmp / "data"), save_path=str(tmp / "Results"),
                NUM_WORKERS=0, interval_step1=5, interval_step2=5, **changes)
    (tmp / "configs" / name).write_text(yaml.safe_dump(data, sort_keys=False))


def table_args(tmp, out):
    return ["--configs", str(tmp / "configs"), "--rows", "CaGNet", "CaGNet+ST", "--max_iter", str(ITERS),
            "--n_train", "40", "--n_test", "20", "--picture_rows", "3", "--device", "cpu", "--out", str(tmp / out)]


def checkpoints(tmp, names=("models", "models_transfer", "models_st", "models_st_transfer")):
    """Modification times of the stages' final checkpoints (unchanged = not trained again)."""
    folder = tmp / "Results" / "demo" / "0"
    return {name: os.stat(folder / name / ("%08d.pth" % ITERS)).st_mtime_ns for name in names}


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("table")
    (tmp / "configs").mkdir()
    for name in CONFIGS:
        redirect(tmp, name)
    demo_scores = run_demo.main(["--config", str(tmp / "configs" / "demo.yaml"), "--finetune_config",
                                 str(tmp / "configs" / "demo_finetune.yaml"), "--out", str(tmp / "demo"),
                                 "--n_train", "40", "--n_test", "20", "--step1_iters", str(ITERS), "--mixed_iters",
                                 str(ITERS), "--device", "cpu"])
    demo_models = checkpoints(tmp, ("models", "models_transfer"))
    entries = demo_table.main(table_args(tmp, "out"))
    return tmp, demo_scores, demo_models, entries


def test_table_json_has_the_exact_schema(table):
    tmp, _, _, entries = table
    written = json.loads((tmp / "out" / "table.json").read_text())
    assert written == entries
    assert [e["method"] for e in written] == ["CaGNet", "CaGNet+ST"]
    for entry in written:
        assert list(entry) == KEYS
        assert all(isinstance(entry[k], float) and 0 <= entry[k] <= 1 for k in KEYS[1:]), entry
    scores = json.loads((tmp / "out" / "table" / "scores_CaGNet_plus_ST.json").read_text())
    assert written[1]["U-mIoU"] == scores["U-mIoU"] and scores["method"] == "cagnet"


def test_cagnet_row_reuses_the_demo_runs(table):
    tmp, demo_scores, demo_models, entries = table
    assert checkpoints(tmp, ("models", "models_transfer")) == demo_models   # not trained again
    for key in KEYS[1:]:
        assert entries[0][key] == demo_scores["mixed"][key], key
    text = (tmp / "out" / "table.md").read_text()
    assert "cagnet_step1: `" in text and text.count("**reused**") == 2 and text.count(": trained in") == 2
    assert "stages: 2 trained, 2 reused" in text


def test_table_markdown_and_picture(table):
    tmp, _, _, entries = table
    text = (tmp / "out" / "table.md").read_text()
    assert text.startswith("| method | hIoU | mIoU | pixel acc. | mean acc. | S-mIoU | U-mIoU |")
    for entry in entries:
        assert f"| {entry['method']} | {entry['hIoU']:.4f} | {entry['mIoU']:.4f} |" in text
    picture = np.array(Image.open(tmp / "out" / "table_predictions.png"))
    # 3 rows of 64x64 images scaled 3x; columns input, ground truth, CaGNet, CaGNet+ST
    assert picture.ndim == 3 and picture.shape[0] > 3 * 192 and picture.shape[1] > 4 * 192
    assert len(os.listdir(tmp / "out" / "table" / "predictions_CaGNet")) == 20


def test_rerun_trains_nothing_and_a_changed_config_retrains_its_stage(table):
    tmp, _, _, entries = table
    before = checkpoints(tmp)
    assert demo_table.main(table_args(tmp, "again")) == entries
    assert checkpoints(tmp) == before
    assert "stages: 0 trained, 4 reused" in (tmp / "again" / "table.md").read_text()
    redirect(tmp, "demo_st_transfer.yaml", lambda_D_cls_fake_transfer=0.5)
    demo_table.main(table_args(tmp, "changed"))
    after = checkpoints(tmp)
    assert [name for name in after if after[name] != before[name]] == ["models_st_transfer"]
    text = (tmp / "changed" / "table.md").read_text()
    assert "stages: 1 trained, 3 reused" in text
