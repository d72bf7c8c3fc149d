import json
import math

import numpy as np
import pytest
import torch

from libs.metrics import (
    SCORE_KEYS,
    class_table,
    format_all_scores,
    format_score_table,
    gzsl_scores,
    new_confusion,
    scores_to_json,
    update_confusion,
)

# n = 3, S = 2 (ids 0, 1 seen; 2 unseen). rows = GT: 6, 10, 4 pixels; cols: 7, 8, 5; diag 5, 6, 3.
H3 = np.array([[5, 1, 0],
               [2, 6, 2],
               [0, 1, 3]])

# n = 4, S = 2. Class 1: absent from GT and prediction (NaN). Class 3: absent from GT, predicted (IoU 0).
H4 = np.array([[4, 0, 0, 1],
               [0, 0, 0, 0],
               [1, 0, 2, 1],
               [0, 0, 0, 0]])


def test_scores_by_hand_3x3():
    s = gzsl_scores(H3, num_seen=2)
    assert s["pixel_acc"] == pytest.approx(14 / 20)
    assert s["pixel_acc_seen"] == pytest.approx(11 / 16)
    assert s["pixel_acc_unseen"] == pytest.approx(3 / 4)
    assert s["pixel_acc_harmonic"] == pytest.approx(2 * (11 / 16) * 0.75 / (11 / 16 + 0.75))
    assert s["mean_acc"] == pytest.approx((5 / 6 + 0.6 + 0.75) / 3)
    assert s["mean_acc_seen"] == pytest.approx((5 / 6 + 0.6) / 2)
    assert s["mean_acc_unseen"] == pytest.approx(0.75)
    np.testing.assert_allclose(s["class_iou"], [5 / 8, 6 / 12, 3 / 6])
    assert s["mIoU"] == pytest.approx(1.625 / 3)
    assert s["S-mIoU"] == pytest.approx(0.5625)
    assert s["U-mIoU"] == pytest.approx(0.5)
    assert s["hIoU"] == pytest.approx(0.5625 / 1.0625)  # 2*0.5625*0.5 / (0.5625+0.5)
    assert s["freqw_acc"] == pytest.approx(0.1875 + 0.25 + 0.1)
    assert s["freqw_acc_seen"] == pytest.approx(0.4375)
    assert s["freqw_acc_unseen"] == pytest.approx(0.1)
    assert s["freqw_acc_harmonic"] == pytest.approx(0.0875 / 0.5375)


def test_nan_semantics_4x4():
    s = gzsl_scores(torch.from_numpy(H4), num_seen=2)   # torch input works too
    iou = s["class_iou"]
    assert iou[0] == pytest.approx(4 / 6) and math.isnan(iou[1]) and iou[2] == pytest.approx(0.5) and iou[3] == 0
    assert s["mIoU"] == pytest.approx((4 / 6 + 0.5 + 0.0) / 3)      # NaN excluded, the predicted-only 0 counts
    assert s["S-mIoU"] == pytest.approx(4 / 6)
    assert s["U-mIoU"] == pytest.approx(0.25)
    assert s["hIoU"] == pytest.approx(4 / 11)
    assert s["mean_acc"] == pytest.approx(0.65)                      # classes 1 and 3 have no GT
    assert s["pixel_acc"] == pytest.approx(6 / 9)
    assert s["freqw_acc"] == pytest.approx(16 / 27)


def test_harmonic_zero_when_unseen_is_zero_or_nan():
    s = gzsl_scores(np.array([[3, 0, 0], [0, 2, 0], [1, 1, 0]]), num_seen=2)
    assert s["U-mIoU"] == 0 and s["hIoU"] == 0.0
    assert s["pixel_acc_unseen"] == 0 and s["pixel_acc_harmonic"] == 0.0
    s = gzsl_scores(np.array([[3, 0, 0], [0, 2, 0], [0, 0, 0]]), num_seen=2)
    assert math.isnan(s["U-mIoU"]) and s["hIoU"] == 0.0
    assert math.isnan(s["mean_acc_unseen"]) and s["mean_acc_harmonic"] == 0.0
    s = gzsl_scores(np.zeros((3, 3)), num_seen=2)
    assert math.isnan(s["mIoU"]) and math.isnan(s["pixel_acc"]) and s["hIoU"] == 0.0


def test_bincount_accumulation_over_batches_with_ignore():
    conf = new_confusion(3, miss_column=False)
    update_confusion(conf, torch.tensor([[0, 0, 255], [1, 2, 2]]), torch.tensor([[0, 1, 2], [1, 2, 0]]), 3)
    update_confusion(conf, torch.tensor([[2, 255], [0, 1]]), torch.tensor([[2, 0], [0, 0]]), 3)
    expected = torch.tensor([[2, 1, 0],
                             [1, 1, 0],
                             [1, 0, 2]])
    assert conf.dtype == torch.int64 and torch.equal(conf, expected)


def test_dead_channel_prediction_is_a_miss():
    gt = torch.tensor([[0, 1, 2, 1]])
    pred = torch.tensor([[0, 3, 2, 1]])          # n = 3: channel 3 is the dead "bg" output
    with_miss = update_confusion(new_confusion(3), gt, pred, 3)
    assert torch.equal(with_miss, torch.tensor([[1, 0, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0]]))
    s = gzsl_scores(with_miss, num_seen=2)
    np.testing.assert_allclose(s["class_iou"], [1.0, 0.5, 1.0])  # class 1: 1 / (2 + 1 - 1)
    assert s["pixel_acc"] == pytest.approx(3 / 4)
    square = update_confusion(new_confusion(3, miss_column=False), gt, pred, 3)
    assert torch.equal(square, torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1]]))  # pixel left out
    # Without dead predictions both layouts give the same scores.
    a = gzsl_scores(update_confusion(new_confusion(3), gt, gt, 3), 2)
    b = gzsl_scores(update_confusion(new_confusion(3, miss_column=False), gt, gt, 3), 2)
    assert a["hIoU"] == b["hIoU"] and a["pixel_acc"] == b["pixel_acc"]


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="confusion"):
        update_confusion(torch.zeros(3, 5, dtype=torch.int64), torch.zeros(2), torch.zeros(2), 3)
    with pytest.raises(ValueError, match="num_seen"):
        gzsl_scores(H3, num_seen=4)


def test_table_and_json():
    s1, s2 = gzsl_scores(H3, 2), gzsl_scores(np.array([[3, 0, 0], [0, 2, 0], [0, 0, 0]]), 2)
    text = format_score_table({"step1": s1, "mixed": s2}, class_names=["cat", "dog", "cow"])
    lines = text.splitlines()
    assert lines[0].split() == ["metric", "step1", "mixed"]
    assert lines[2].split() == ["hIoU", "0.5294", "0.0000"]
    assert [line.split()[0] for line in lines[2:6]] == ["hIoU", "mIoU", "pixel", "mean"]
    assert lines[6].split() == ["S-mIoU", "0.5625", "1.0000"]
    assert lines[7].split() == ["U-mIoU", "0.5000", "nan"]
    assert lines[-1].split() == ["cow", "0.5000", "nan"]
    out = scores_to_json(s2, ["cat", "dog", "cow"])
    assert out["U-mIoU"] is None and out["hIoU"] == 0.0 and out["S-mIoU"] == 1.0
    assert out["class_iou"] == {"cat": 1.0, "dog": 1.0, "cow": None}
    assert set(out) == {"hIoU", "mIoU", "pixel_acc", "mean_acc", "S-mIoU", "U-mIoU", "class_iou"}
    json.dumps(out, allow_nan=False)
    assert type(scores_to_json(s1, ["a", "b", "c"])["mIoU"]) is float


def test_all_sixteen_scores_in_json_table_and_per_class_rows():
    s = gzsl_scores(H3, 2)
    assert len(SCORE_KEYS) == 16 and SCORE_KEYS[:6] == ("hIoU", "mIoU", "pixel_acc", "mean_acc", "S-mIoU", "U-mIoU")
    out = scores_to_json(s, ["cat", "dog", "cow"], all_scores=True)
    assert set(out) == set(SCORE_KEYS) | {"class_iou", "class_acc"}
    assert out["freqw_acc_unseen"] == pytest.approx(0.1) and out["pixel_acc_seen"] == pytest.approx(11 / 16)
    assert out["class_acc"] == pytest.approx({"cat": 5 / 6, "dog": 0.6, "cow": 0.75})
    text = format_all_scores(s).splitlines()
    assert text[0].split() == ["score", "overall", "seen", "unseen", "harmonic"]
    assert text[2].split() == ["pixel", "acc.", "0.7000", "0.6875", "0.7500", "0.7174"]
    assert text[4].split()[-4:] == ["0.5375", "0.4375", "0.1000", "0.1628"]      # frequency-weighted IoU
    assert text[5].split() == ["IoU", "0.5417", "0.5625", "0.5000", "0.5294"]   # mIoU, S-, U-mIoU, hIoU
    # per class: the dead-channel miss column counts as a GT pixel of its row, not as a prediction
    h = np.concatenate([H3, np.array([[0], [3], [0]])], axis=1)
    rows = class_table(h, 2, ["cat", "dog", "cow"])
    assert [r["class"] for r in rows] == ["cat", "dog", "cow"] and [r["split"] for r in rows] == ["seen", "seen",
                                                                                                  "unseen"]
    assert [r["gt_pixels"] for r in rows] == [6, 13, 4] and [r["predicted_pixels"] for r in rows] == [7, 8, 5]
    assert rows[1]["IoU"] == pytest.approx(6 / 15) and rows[1]["accuracy"] == pytest.approx(6 / 13)
    nan_rows = class_table(H4, 2, list("abcd"))
    assert math.isnan(nan_rows[1]["IoU"]) and nan_rows[3]["IoU"] == 0.0 and nan_rows[3]["predicted_pixels"] == 2
    with pytest.raises(ValueError, match="3 names"):
        class_table(H4, 2, ["a", "b", "c"])
