"""Generalized zero-shot segmentation metrics (docs/method.md §7), as pure functions.

Evaluation accumulates one confusion matrix over the whole test set on the device with
``torch.bincount`` (:func:`update_confusion`); :func:`gzsl_scores` turns it into the paper's numbers
with the original's NaN semantics; :func:`format_score_table` (the paper's six), :func:`format_all_scores` (all
16), :func:`scores_to_json` and :func:`class_table` (per class, with pixel counts) present them.

Matrix layout: rows = ground-truth test id, columns = predicted test id, n = S + U classes. The matrix
may carry one extra column (shape (n, n + 1)) that counts predictions outside 0..n-1, i.e. the dead
classifier channel C - 1 = n; see :func:`update_confusion`.
"""
import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

TABLE_ROWS = (
    ("hIoU", "hIoU"),
    ("mIoU", "mIoU"),
    ("pixel acc.", "pixel_acc"),
    ("mean acc.", "mean_acc"),
    ("S-mIoU", "S-mIoU"),
    ("U-mIoU", "U-mIoU"),
)
JSON_KEYS = ("hIoU", "mIoU", "pixel_acc", "mean_acc", "S-mIoU", "U-mIoU")
# The 16 scores of gzsl_scores as (family label, overall, seen, unseen, harmonic) keys (docs/method.md §7.3).
SCORE_FAMILIES = (
    ("pixel acc.", "pixel_acc", "pixel_acc_seen", "pixel_acc_unseen", "pixel_acc_harmonic"),
    ("mean acc.", "mean_acc", "mean_acc_seen", "mean_acc_unseen", "mean_acc_harmonic"),
    ("freq.-weighted IoU", "freqw_acc", "freqw_acc_seen", "freqw_acc_unseen", "freqw_acc_harmonic"),
    ("IoU", "mIoU", "S-mIoU", "U-mIoU", "hIoU"),
)
# Every scalar score: the paper's six first (the JSON's historical keys), then the other ten.
SCORE_KEYS = JSON_KEYS + tuple(key for family in SCORE_FAMILIES for key in family[1:] if key not in JSON_KEYS)


def new_confusion(num_classes: int, device=None, miss_column: bool = True) -> torch.Tensor:
    """An all-zero int64 confusion matrix, (n, n + 1) with the miss column (default) or (n, n)."""
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    return torch.zeros(num_classes, num_classes + int(miss_column), dtype=torch.int64, device=device)


def update_confusion(confusion: torch.Tensor, gt: torch.Tensor, pred: torch.Tensor,
                     num_classes: int) -> torch.Tensor:
    """Add one batch to the confusion matrix, in place, and return it.

    Args:
        confusion: int64 (n, n) or (n, n + 1) on any device; rows = GT, columns = prediction.
        gt: ground-truth test ids, any shape, e.g. (N, 65, 65); 255 (or anything outside 0..n-1) is ignored.
        pred: predicted ids, same shape as gt, values 0..C-1 (C = n + 1 includes the dead channel).
        num_classes: n = S + U.

    Only pixels with 0 <= gt < n are counted. A prediction outside 0..n-1 (the dead channel n, which
    the original never guards against and which would corrupt its matrix, docs/method.md §7.2) is a
    miss for its GT row: with an (n, n + 1) matrix it lands in the extra column, so it lowers that
    class's recall and IoU but adds to no class's column; with an (n, n) matrix such a pixel is left
    out entirely (it cannot be represented), which is why :func:`new_confusion` adds the column by
    default. When the dead channel is never predicted both layouts give identical scores.
    """
    n = int(num_classes)
    if confusion.dim() != 2 or confusion.shape[0] != n or confusion.shape[1] not in (n, n + 1):
        raise ValueError(f"confusion must have shape ({n}, {n}) or ({n}, {n + 1}), got "
                         f"{tuple(confusion.shape)}")
    if gt.shape != pred.shape:
        raise ValueError(f"gt shape {tuple(gt.shape)} != pred shape {tuple(pred.shape)}")
    cols = confusion.shape[1]
    gt = gt.reshape(-1).to(device=confusion.device, dtype=torch.int64)
    pred = pred.reshape(-1).to(device=confusion.device, dtype=torch.int64)
    keep = (gt >= 0) & (gt < n)
    pred_in_range = (pred >= 0) & (pred < n)
    if cols == n:
        keep &= pred_in_range
    else:
        pred = torch.where(pred_in_range, pred, torch.full_like(pred, n))
    counts = torch.bincount(gt[keep] * cols + pred[keep], minlength=n * cols)
    confusion += counts.reshape(n, cols).to(confusion.dtype)
    return confusion


def _nanmean(values: np.ndarray) -> float:
    """Mean over non-NaN entries; NaN (without a warning) when there is none."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den != 0 else math.nan


def harmonic(seen: float, unseen: float) -> float:
    """2 / (1/seen + 1/unseen); 0 when the result is NaN or either term is 0 (docs/method.md §7.3)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        value = float(np.float64(2.0) / (np.float64(1.0) / np.float64(seen) + np.float64(1.0) / np.float64(unseen)))
    return 0.0 if math.isnan(value) else value


def gzsl_scores(confusion, num_seen: int) -> dict:
    """GZSL scores of a confusion matrix (docs/method.md §7.3, the original's ``scores_gzsl``).

    Args:
        confusion: (n, n) or (n, n + 1) numpy array or torch tensor, rows = GT, columns = prediction;
            the optional last column counts misses (see :func:`update_confusion`).
        num_seen: S; test ids 0..S-1 are seen, S..n-1 unseen.

    Returns a dict of Python floats (NaN where undefined) and numpy arrays:
        'pixel_acc', 'pixel_acc_seen', 'pixel_acc_unseen', 'pixel_acc_harmonic':
            trace / total over all rows, over seen rows, over unseen rows; harmonic mean of the two.
        'mean_acc', 'mean_acc_seen', 'mean_acc_unseen', 'mean_acc_harmonic':
            nanmean of per-class recall (classes without GT pixels are NaN and excluded).
        'mIoU', 'S-mIoU', 'U-mIoU', 'hIoU': nanmean of per-class IoU over all / seen / unseen classes;
            hIoU = 2 / (1/S-mIoU + 1/U-mIoU), 0 when NaN or when U-mIoU is 0.
        'freqw_acc', 'freqw_acc_seen', 'freqw_acc_unseen', 'freqw_acc_harmonic':
            sum_c (GT pixels of c / all GT pixels) * IoU_c with NaN terms as 0, over all classes and the
            seen / unseen partial sums (same normalisation, so seen + unseen = all); harmonic.
        'class_iou', 'class_acc': per-class IoU and recall, float64 arrays of length n.
    IoU_c = H_cc / (row_c + col_c - H_cc) is NaN when class c is absent from both GT and prediction
    (excluded from every mean) and 0 when it is predicted but absent from GT (that 0 does count).
    Every harmonic entry uses the hIoU rule (NaN -> 0).
    """
    if isinstance(confusion, torch.Tensor):
        confusion = confusion.detach().cpu().numpy()
    hist = np.asarray(confusion, dtype=np.float64)
    if hist.ndim != 2 or hist.shape[1] not in (hist.shape[0], hist.shape[0] + 1):
        raise ValueError(f"confusion must have shape (n, n) or (n, n + 1), got {hist.shape}")
    n = hist.shape[0]
    if not 0 <= num_seen <= n:
        raise ValueError(f"num_seen must be in 0..{n}, got {num_seen}")
    s = int(num_seen)
    diag = np.diag(hist[:, :n]).copy()
    rows = hist.sum(axis=1)            # GT pixels per class, misses included
    cols = hist[:, :n].sum(axis=0)     # predictions per class
    total = rows.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        class_acc = diag / rows
        class_iou = diag / (rows + cols - diag)
    freq_iou = np.zeros(n) if total == 0 else np.where(np.isnan(class_iou), 0.0, rows / total * class_iou)

    scores = {
        "pixel_acc": _ratio(diag.sum(), total),
        "pixel_acc_seen": _ratio(diag[:s].sum(), rows[:s].sum()),
        "pixel_acc_unseen": _ratio(diag[s:].sum(), rows[s:].sum()),
        "mean_acc": _nanmean(class_acc),
        "mean_acc_seen": _nanmean(class_acc[:s]),
        "mean_acc_unseen": _nanmean(class_acc[s:]),
        "mIoU": _nanmean(class_iou),
        "S-mIoU": _nanmean(class_iou[:s]),
        "U-mIoU": _nanmean(class_iou[s:]),
        "freqw_acc": float(freq_iou.sum()),
        "freqw_acc_seen": float(freq_iou[:s].sum()),
        "freqw_acc_unseen": float(freq_iou[s:].sum()),
        "class_iou": class_iou,
        "class_acc": class_acc,
    }
    scores["pixel_acc_harmonic"] = harmonic(scores["pixel_acc_seen"], scores["pixel_acc_unseen"])
    scores["mean_acc_harmonic"] = harmonic(scores["mean_acc_seen"], scores["mean_acc_unseen"])
    scores["hIoU"] = harmonic(scores["S-mIoU"], scores["U-mIoU"])
    scores["freqw_acc_harmonic"] = harmonic(scores["freqw_acc_seen"], scores["freqw_acc_unseen"])
    return scores


def _fmt(value) -> str:
    value = float(value)
    return "nan" if math.isnan(value) else f"{value:.4f}"


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = []
    for line in [header, *body]:
        cells = [line[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(line[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def format_score_table(scores_by_column: Dict[str, dict], class_names: Optional[Sequence[str]] = None) -> str:
    """Paper-style table: rows hIoU, mIoU, pixel acc., mean acc., S-mIoU, U-mIoU, one column per entry
    of ``scores_by_column`` (e.g. ``{'step1': scores_a, 'mixed': scores_b}``), values with 4 decimals.
    With ``class_names`` (test-id order) a second block lists each class's IoU by name."""
    if not scores_by_column:
        raise ValueError("scores_by_column must contain at least one column")
    columns = list(scores_by_column)
    body = [[label] + [_fmt(scores_by_column[c][key]) for c in columns] for label, key in TABLE_ROWS]
    text = _table(["metric"] + columns, body)
    if class_names is not None:
        for column in columns:
            if len(scores_by_column[column]["class_iou"]) != len(class_names):
                raise ValueError(f"class_names has {len(class_names)} names but column {column!r} has "
                                 f"{len(scores_by_column[column]['class_iou'])} classes")
        body = [[name] + [_fmt(scores_by_column[c]["class_iou"][i]) for c in columns]
                for i, name in enumerate(class_names)]
        text += "\n\n" + _table(["class IoU"] + columns, body)
    return text


def format_all_scores(scores: dict) -> str:
    """The 16 scores as a table: rows pixel acc. / mean acc. / freq.-weighted IoU / IoU, columns overall, seen,
    unseen, harmonic (the IoU row's harmonic is hIoU)."""
    body = [[label] + [_fmt(scores[key]) for key in keys] for label, *keys in SCORE_FAMILIES]
    return _table(["score", "overall", "seen", "unseen", "harmonic"], body)


def class_table(confusion, num_seen: int, class_names: Sequence[str]) -> List[dict]:
    """One row per class (test-id order) from a confusion matrix (n, n) or (n, n + 1): test id, name, split
    (seen/unseen), IoU, accuracy (recall), GT pixels (its row, misses included) and predicted pixels (its
    column); IoU and accuracy NaN as in :func:`gzsl_scores`."""
    if isinstance(confusion, torch.Tensor):
        confusion = confusion.detach().cpu().numpy()
    hist = np.asarray(confusion, dtype=np.int64)
    n = hist.shape[0]
    if len(class_names) != n:
        raise ValueError(f"class_names has {len(class_names)} names but the confusion matrix has {n} classes")
    scores = gzsl_scores(hist, num_seen)
    gt_pixels, predicted = hist.sum(axis=1), hist[:, :n].sum(axis=0)
    return [{"test_id": c, "class": str(class_names[c]), "split": "seen" if c < num_seen else "unseen",
             "IoU": float(scores["class_iou"][c]), "accuracy": float(scores["class_acc"][c]),
             "gt_pixels": int(gt_pixels[c]), "predicted_pixels": int(predicted[c])} for c in range(n)]


def _json_float(value):
    value = float(value)
    return None if math.isnan(value) else value


def scores_to_json(scores: dict, class_names: Optional[Sequence[str]] = None, all_scores: bool = False) -> dict:
    """JSON-ready summary: hIoU, mIoU, pixel_acc, mean_acc, S-mIoU, U-mIoU as Python floats and
    class_iou as {name: IoU}; NaN becomes None (JSON has no NaN). Without names the keys are the
    test ids as strings. all_scores: also the other ten scores (SCORE_KEYS, gzsl_scores' names) and
    class_acc as {name: accuracy}."""
    class_iou = scores["class_iou"]
    if class_names is None:
        class_names = [str(i) for i in range(len(class_iou))]
    if len(class_names) != len(class_iou):
        raise ValueError(f"class_names has {len(class_names)} names but the scores have {len(class_iou)} classes")
    out = {key: _json_float(scores[key]) for key in (SCORE_KEYS if all_scores else JSON_KEYS)}
    out["class_iou"] = {str(name): _json_float(v) for name, v in zip(class_names, class_iou)}
    if all_scores:
        out["class_acc"] = {str(name): _json_float(v) for name, v in zip(class_names, scores["class_acc"])}
    return out
