"""Evaluation on the test set (docs/method.md §7) and the prediction files it can write.

Modes (config key `eval_mode`, flag `--eval_mode`):
* `feature` — the original's protocol: argmax of the classifier on the full-scale feature of the warped input,
  scored against the raw label resized nearest to the feature size (65x65 for a 513x513 input).
* `warped` — SPNet's protocol: the logits upsampled bilinearly (align_corners=False) to the warped network input
  (513x513) and scored against the warped label at that size.
Calibrated stacking (SPNet-c, config key `calibration`, flag `--calibrate`): gamma is subtracted from the seen
classes' softmax probabilities (softmax over the S + U class channels) before the argmax; gamma = 0 keeps the
original's plain argmax over every classifier channel.
One confusion matrix over the test set in every mode, the same score function.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from libs.datasets.splits import VOID_LABEL
from libs.metrics import gzsl_scores, new_confusion, update_confusion
from models.ops import nearest_resize

EVAL_MODES = ("feature", "warped")


def predicted_ids(logits: torch.Tensor, num_seen: int, num_classes: int, calibration: float = 0.0) -> torch.Tensor:
    """Per-pixel predicted test id from logits (N, C, h, w): the argmax over all C channels, or with calibration
    gamma > 0 the argmax of softmax over the S + U class channels minus gamma on the seen ones (a channel beyond
    S + U, CaGNet's dead one, never wins then)."""
    if calibration == 0:
        return logits.argmax(1)
    probabilities = torch.softmax(logits[:, :num_classes].float(), dim=1)
    probabilities[:, :num_seen] -= calibration
    return probabilities.argmax(1)


@torch.no_grad()
def evaluate(model, loader, splits, device, *, mode: str = "feature", calibration: float = 0.0,
             predictions_dir: Optional[str] = None, progress=None,
             autocast: Callable = contextlib.nullcontext) -> dict:
    """Scores of `model` (any method's: `predict(images) -> logits (N, C, h, w)`) on the test loader.

    autocast: the context the forward pass runs in (mixed precision, libs/engine/precision.py); the argmax and
    the calibration's softmax run on float32 logits.

    predictions_dir: write `<image id>.png` per image with the predicted raw label ids at the scoring resolution
    (a channel that is no class, such as CaGNet's dead one, is written as the void label 255).
    """
    if mode not in EVAL_MODES:
        raise ValueError(f"eval_mode must be one of {', '.join(EVAL_MODES)}, got {mode!r}")
    model.eval()
    n = splits.num_classes
    confusion = new_confusion(n, device)
    test_map = torch.tensor(np.array(splits.test_map), device=device)
    to_raw = torch.full((n + 1,), VOID_LABEL, dtype=torch.long)
    to_raw[:n] = torch.tensor(np.array(splits.test_ids_to_raw))
    if predictions_dir:
        os.makedirs(predictions_dir, exist_ok=True)
    for images, raw_labels, image_ids in (progress(loader) if progress else loader):
        images = images.to(device, non_blocking=True)
        with autocast():
            logits = model.predict(images)
        logits = logits.float()
        if mode == "warped":
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        pred = predicted_ids(logits, splits.num_seen, n, calibration)
        raw_small = nearest_resize(raw_labels.to(device, non_blocking=True), pred.shape[-2:])
        gt = test_map[raw_small.clamp(0, len(test_map) - 1)]
        update_confusion(confusion, gt, pred, n)
        if predictions_dir:
            raw_pred = to_raw[pred.clamp(max=n).cpu()].numpy().astype(np.uint8)
            for image_id, pred_map in zip(image_ids, raw_pred):
                path = os.path.join(predictions_dir, f"{image_id}.png")
                if not cv2.imwrite(path, pred_map):
                    raise OSError(f"could not write the prediction {path}")
    return gzsl_scores(confusion.cpu(), splits.num_seen)
