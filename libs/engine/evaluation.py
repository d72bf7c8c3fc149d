"""Evaluation on the test set (docs/method.md §7) and the prediction files it can write."""
from __future__ import annotations

import os
from typing import Optional

import cv2
import numpy as np
import torch

from libs.datasets.splits import VOID_LABEL
from libs.metrics import gzsl_scores, new_confusion, update_confusion
from models.ops import nearest_resize


@torch.no_grad()
def evaluate(model, loader, splits, device, predictions_dir: Optional[str] = None, progress=None) -> dict:
    """The original's protocol: argmax of the classifier on the full-scale feature of the warped input, scored
    against the raw label resized nearest to the feature size, one confusion matrix over the test set.

    model: any method's model with `predict(images) -> logits (N, C, h, w)`. predictions_dir: write
    `<image id>.png` per image with the predicted raw label ids at that resolution (the dead channel, never a
    class, is written as the void label 255).
    """
    model.eval()
    n = splits.num_classes
    confusion = new_confusion(n, device)
    test_map = torch.tensor(np.array(splits.test_map), device=device)
    to_raw = torch.full((n + 1,), VOID_LABEL, dtype=torch.long)
    to_raw[:n] = torch.tensor(np.array(splits.test_ids_to_raw))
    if predictions_dir:
        os.makedirs(predictions_dir, exist_ok=True)
    for images, raw_labels, image_ids in (progress(loader) if progress else loader):
        logits = model.predict(images.to(device, non_blocking=True))
        pred = logits.argmax(1)
        raw_small = nearest_resize(raw_labels.to(device, non_blocking=True), pred.shape[-2:])
        gt = test_map[raw_small.clamp(0, len(test_map) - 1)]
        update_confusion(confusion, gt, pred, n)
        if predictions_dir:
            raw_pred = to_raw[pred.cpu()].numpy().astype(np.uint8)
            for image_id, pred_map in zip(image_ids, raw_pred):
                path = os.path.join(predictions_dir, f"{image_id}.png")
                if not cv2.imwrite(path, pred_map):
                    raise OSError(f"could not write the prediction {path}")
    return gzsl_scores(confusion.cpu(), splits.num_seen)
