"""tools/summarize_runs.py on hand-written --val JSONs."""
import json

import pytest

from tools import summarize_runs


def write(tmp_path, name, **scores):
    record = {"method": "cagnet", "dataset": "demo", "eval_mode": "feature", "calibration": 0.0,
              "config": "configs/demo_finetune.yaml", "hIoU": 0.3, "mIoU": 0.5, "U-mIoU": 0.2,
              "class_iou": {"cat": 0.5, "sofa": None}}
    record.update(scores)
    path = tmp_path / name
    path.write_text(json.dumps(record))
    return str(path)


def test_mean_std_min_max_per_score_and_class(tmp_path, capsys):
    files = [write(tmp_path, "a.json", hIoU=0.30, **{"U-mIoU": None}),
             write(tmp_path, "b.json", hIoU=0.36, class_iou={"cat": 0.7, "sofa": 0.1}),
             write(tmp_path, "c.json", hIoU=0.33)]
    md = tmp_path / "summary.md"
    out_json = tmp_path / "summary.json"
    assert summarize_runs.main([*files, "--classes", "--markdown", str(md), "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "cagnet on demo, eval_mode feature: 3 run(s)" in text
    # hIoU 0.30, 0.36, 0.33: mean 0.33, sample std 0.03
    lines = {line.split()[0]: line.split()[1:] for line in text.splitlines()[3:]}
    assert lines["hIoU"] == ["0.3300", "±", "0.0300", "0.3000", "0.3600", "3"]
    entry = json.loads(out_json.read_text())[0]
    assert entry["scores"]["hIoU"] == pytest.approx({"n": 3, "mean": 0.33, "std": 0.03, "min": 0.30, "max": 0.36})
    assert entry["scores"]["U-mIoU"]["n"] == 2                  # the null run is left out
    assert entry["scores"]["mIoU"]["std"] == 0.0
    assert entry["class_iou"]["sofa"] == {"n": 1, "mean": 0.1, "std": None, "min": 0.1, "max": 0.1}
    assert entry["class_iou"]["cat"]["mean"] == pytest.approx(0.5666666666)
    assert list(entry["scores"]) == ["hIoU", "mIoU", "U-mIoU"]   # only the scores the files have, in table order
    markdown = md.read_text()
    assert "| hIoU | 0.3300 ± 0.0300 | 0.3000 | 0.3600 | 3 |" in markdown
    assert "| IoU sofa | 0.1000 | 0.1000 | 0.1000 | 1 |" in markdown


def test_mixed_runs_are_grouped_or_refused(tmp_path, capsys):
    files = [write(tmp_path, "f.json"), write(tmp_path, "g.json", eval_mode="full", hIoU=0.2),
             write(tmp_path, "h.json", config="other.yaml")]
    assert summarize_runs.main(files) == 0
    text = capsys.readouterr().out
    assert "eval_mode feature: 2 run(s)" in text and "eval_mode full: 1 run(s)" in text
    assert "note: these runs name different configs: configs/demo_finetune.yaml, other.yaml" in text
    with pytest.raises(ValueError, match="the runs mix .*eval_mode feature.*eval_mode full"):
        summarize_runs.main([*files, "--strict"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"method": "cagnet"}))
    with pytest.raises(ValueError, match="holds no scores"):
        summarize_runs.main([str(bad)])
    with pytest.raises(FileNotFoundError, match="nope.json"):
        summarize_runs.main([str(tmp_path / "nope.json")])
