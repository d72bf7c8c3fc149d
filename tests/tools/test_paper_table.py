"""tools/paper_table.py on generated --val JSONs: row labels from method / calibration / schedule, the paper's
order, the paper's numbers and differences, Markdown and CSV."""
import csv
import json

import pytest

from tools import paper_table

SCORES = ("hIoU", "mIoU", "pixel_acc", "mean_acc", "S-mIoU", "U-mIoU")


def write(tmp_path, name, method, values, calibration=0.0, schedule="step1", dataset="voc12", eval_mode="feature"):
    record = {"method": method, "dataset": dataset, "eval_mode": eval_mode, "calibration": calibration,
              "checkpoint": f"{name}.pth", "schedule": schedule, **dict(zip(SCORES, values))}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(record))
    return str(path)


def test_labels_order_paper_rows_and_differences(tmp_path, capsys):
    files = [
        write(tmp_path, "cag_st", "cagnet", (0.44, 0.66, 0.8, 0.75, 0.78, 0.30), schedule="st_mixed"),
        write(tmp_path, "spc", "spnet", (0.25, 0.63, 0.77, 0.71, 0.78, 0.15), calibration=0.6, eval_mode="warped"),
        write(tmp_path, "sp", "spnet", (0.0, 0.57, 0.76, 0.70, 0.76, None), eval_mode="warped"),
        write(tmp_path, "cag", "cagnet", (0.40, 0.65, 0.81, 0.76, 0.78, 0.27), schedule=None),
    ]
    md, out_csv = tmp_path / "t.md", tmp_path / "t.csv"
    assert paper_table.main([*files, "--paper", "voc12", "--markdown", str(md), "--csv", str(out_csv)]) == 0
    text = capsys.readouterr().out
    assert md.read_text() == text
    labels = [line.split(" | ")[0][2:] for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    ours = [label for label in labels if "(" not in label and label != "method"]
    assert ours == ["SPNet", "SPNet-c", "CaGNet", "CaGNet+ST"]
    # the paper's ZS3Net rows appear without ours; the difference row of SPNet-c: 0.25 - 0.2610 = -0.0110
    assert "ZS3Net (paper)" in labels and "ZS3Net+ST (paper)" in labels
    assert "| SPNet-c (this code - paper) | -0.0110 |" in text
    assert "| SPNet | 0.0000 | 0.5700 | 0.7600 | 0.7000 | 0.7600 | — |" in text
    rows = list(csv.DictReader(open(out_csv)))
    assert {r["kind"] for r in rows} == {"ours", "paper", "difference"}
    cag = next(r for r in rows if r["method"] == "CaGNet+ST (paper)")
    assert float(cag["hIoU"]) == pytest.approx(0.4366)


def test_same_label_twice_is_told_apart_and_bad_input_is_named(tmp_path, capsys):
    a = write(tmp_path, "a", "spnet", (0.1,) * 6, eval_mode="warped")
    b = write(tmp_path, "b", "spnet", (0.2,) * 6, eval_mode="feature", dataset="context")
    c = write(tmp_path, "c", "spnet", (0.3,) * 6, eval_mode="feature")
    paper_table.main([a, b, c])
    text = capsys.readouterr().out
    assert "### voc12" in text and "### context" in text
    assert "SPNet [warped, a.json]" in text and "SPNet [feature, c.json]" in text
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"method": "spnet"}))
    with pytest.raises(ValueError, match="bad.json lacks the scores"):
        paper_table.main([str(bad)])
    assert paper_table.row_label({"method": "zs3net", "schedule": "st"}) == "ZS3Net+ST"
    assert paper_table.row_label({"hIoU": 0}) == "CaGNet"
