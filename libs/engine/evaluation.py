"""Evaluation on the test set (docs/method.md §7) and the prediction files it can write.

Modes (config key `eval_mode`, flag `--eval_mode`); the network input is the warped image in every mode:
* `feature` — the original's protocol: argmax of the classifier on the full-scale feature of the warped input,
  scored against the raw label resized nearest to the feature size (65x65 for a 513x513 input).
* `warped` — SPNet's protocol: the logits upsampled bilinearly (align_corners=False) to the warped network input
  (513x513) and scored against the warped label at that size.
* `full` — full resolution: the same logits upsampled bilinearly (align_corners=False) to each image's ORIGINAL
  size H x W and scored against its raw label at that size (docs/method.md §7.6). Needs the test items'
  originals (`ZeroShotSegmentation(..., originals=True)` batched with `collate_test`); upsampling and argmax run
  per image, in channel chunks when C x H x W exceeds `max_upsample_elements`.
Calibrated stacking (SPNet-c, config key `calibration`, flag `--calibrate`): gamma is subtracted from the seen
classes' softmax probabilities (softmax over the S + U class channels) before the argmax; gamma = 0 keeps the
original's plain argmax over every classifier channel.
One confusion matrix over the test set in every mode, the same score function; under torchrun each process
scores its share of the test set and `all_reduce` sums the matrices (docs/method.md §7.7).
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from libs.datasets.splits import VOID_LABEL
from libs.metrics import gzsl_scores, new_confusion, update_confusion
from libs.visualize import colorize, draw_overlay, write_png
from models.ops import nearest_resize

EVAL_MODES = ("feature", "warped", "full")
# Upsampled logits of one image are computed in channel chunks above this many elements (2**27 float32 = 512 MiB);
# a COCO-Stuff image (at most 640 x 640, 183 channels: 75M elements) is upsampled in one piece.
MAX_UPSAMPLE_ELEMENTS = 2 ** 27


def predicted_ids(logits: torch.Tensor, num_seen: int, num_classes: int, calibration: float = 0.0) -> torch.Tensor:
    """Per-pixel predicted test id from logits (N, C, h, w): the argmax over all C channels, or with calibration
    gamma > 0 the argmax of softmax over the S + U class channels minus gamma on the seen ones (a channel beyond
    S + U, CaGNet's dead one, never wins then)."""
    if calibration == 0:
        return logits.argmax(1)
    probabilities = torch.softmax(logits[:, :num_classes].float(), dim=1)
    probabilities[:, :num_seen] -= calibration
    return probabilities.argmax(1)


def calibrated_argmax(logits: torch.Tensor, seen: torch.Tensor, calibration: float) -> torch.Tensor:
    """logits (N, K, H, W) -> (N, H, W): argmax of softmax over the K channels minus `calibration` on the
    channels where the bool mask `seen` (K,) is set; the plain argmax when calibration is 0."""
    if calibration == 0:
        return logits.argmax(1)
    probabilities = torch.softmax(logits.float(), dim=1)
    probabilities[:, seen.to(probabilities.device)] -= calibration
    return probabilities.argmax(1)


def upsampled_ids(logits: torch.Tensor, size: Sequence[int], seen: Optional[torch.Tensor] = None,
                  calibration: float = 0.0, max_elements: int = MAX_UPSAMPLE_ELEMENTS) -> torch.Tensor:
    """Ids (H, W) of one image: its logits (K, h, w) upsampled with F.interpolate(bilinear, align_corners=False)
    to `size` (H, W), then `calibrated_argmax` over the K channels (`seen`: bool (K,), needed when calibration
    > 0).

    When K x H x W exceeds max_elements the channels are upsampled in chunks: the plain argmax then keeps a
    running maximum (identical to the one-piece result, ties included: the first channel wins); the calibrated
    softmax uses a streaming log-sum-exp (equal to the one-piece softmax up to float rounding).
    """
    k = logits.shape[0]
    size = (int(size[0]), int(size[1]))
    if calibration and (seen is None or seen.shape != (k,)):
        raise ValueError(f"upsampled_ids: calibration needs a bool mask of the {k} seen channels")
    chunk = max(1, int(max_elements) // (size[0] * size[1]))

    def up(lo: int, hi: int) -> torch.Tensor:
        return F.interpolate(logits[None, lo:hi], size=size, mode="bilinear", align_corners=False)[0]

    if chunk >= k:
        return calibrated_argmax(up(0, k)[None], seen, calibration)[0]
    bounds = [(lo, min(k, lo + chunk)) for lo in range(0, k, chunk)]
    if calibration:
        top = total = None
        for lo, hi in bounds:                       # pass 1: the softmax's per-pixel maximum and normaliser
            x = up(lo, hi).float()
            chunk_top = x.max(0).values
            if top is None:
                top, total = chunk_top, torch.exp(x - chunk_top).sum(0)
            else:
                new_top = torch.maximum(top, chunk_top)
                total = total * torch.exp(top - new_top) + torch.exp(x - new_top).sum(0)
                top = new_top
    best = arg = None
    for lo, hi in bounds:
        x = up(lo, hi)
        if calibration:
            x = torch.exp(x.float() - top) / total
            x[seen[lo:hi].to(x.device)] -= calibration
        value, index = x.max(0)
        index = index + lo
        if best is None:
            best, arg = value, index
        else:
            better = value > best                   # strictly: on a tie the earlier channel keeps the pixel
            best, arg = torch.where(better, value, best), torch.where(better, index, arg)
    return arg


class PredictionWriter:
    """Prediction files of one folder: `<id>.png` with the predicted raw label ids (void 255 where the prediction
    is no class), and with `colour` also `colour/<id>.png` (the ids in the palette of libs/visualize.py) and
    `overlay/<id>.png` (the prediction blended into the original image, with a legend, unseen classes marked).

    to_raw: (K + 1,) raw id of each predicted index 0..K-1, then the void id for anything beyond K.
    class_names: names by raw id; seen_ids / unseen_ids: raw ids for the legend (others are listed under
    `other_title`).
    """

    def __init__(self, folder: str, to_raw: torch.Tensor, class_names: Sequence[str], seen_ids: Sequence[int],
                 unseen_ids: Sequence[int], colour: bool = False, other_title: str = "other classes"):
        self.folder = folder
        self.to_raw = to_raw.cpu().long()
        self.class_names = list(class_names)
        self.seen_ids, self.unseen_ids = [int(c) for c in seen_ids], [int(c) for c in unseen_ids]
        self.colour = colour
        self.other_title = other_title
        os.makedirs(folder, exist_ok=True)

    @classmethod
    def for_splits(cls, folder: str, splits, colour: bool = False) -> "PredictionWriter":
        n = splits.num_classes
        to_raw = torch.full((n + 1,), VOID_LABEL, dtype=torch.long)
        to_raw[:n] = torch.tensor(np.array(splits.test_ids_to_raw))
        return cls(folder, to_raw, splits.raw_names, splits.seen, splits.unseen, colour)

    def raw_ids(self, pred: torch.Tensor) -> np.ndarray:
        """Predicted indices (h, w) -> raw ids uint8 (h, w)."""
        return self.to_raw[pred.clamp(max=len(self.to_raw) - 1).cpu()].numpy().astype(np.uint8)

    def write(self, image_id: str, pred: torch.Tensor, original=None) -> np.ndarray:
        """Write the files of one image; pred: predicted indices (h, w); original: its `Original` (the overlay
        needs the image file). Returns the raw ids written."""
        raw = self.raw_ids(pred)
        path = os.path.join(self.folder, f"{image_id}.png")
        if not cv2.imwrite(path, raw):
            raise OSError(f"could not write the prediction {path}")
        if self.colour:
            if original is None:
                raise ValueError("colour predictions need the images: build the test set with originals=True")
            write_png(os.path.join(self.folder, "colour", f"{image_id}.png"), colorize(raw))
            image = cv2.imread(original.image_path, cv2.IMREAD_COLOR)
            if image is None:
                raise ValueError(f"image {original.image_path} could not be read for the overlay of {image_id}")
            overlay = draw_overlay(image, raw, self.class_names, self.seen_ids, self.unseen_ids,
                                   other_title=self.other_title)
            write_png(os.path.join(self.folder, "overlay", f"{image_id}.png"), overlay)
        return raw


@torch.no_grad()
def evaluate(model, loader, splits, device, *, mode: str = "feature", calibration: float = 0.0,
             predictions_dir: Optional[str] = None, progress=None, save_colour: bool = False,
             all_reduce: Optional[Callable[[torch.Tensor], object]] = None,
             max_upsample_elements: int = MAX_UPSAMPLE_ELEMENTS,
             autocast: Callable = contextlib.nullcontext) -> dict:
    """Scores of `model` (any method's: `predict(images) -> logits (N, C, h, w)`) on the test loader.

    Batches are (images, raw labels, ids) or, from a test set with originals (`collate_test`), (images, raw
    labels, ids, originals); mode `full` and `save_colour` need the originals. autocast: the context the forward
    pass runs in (mixed precision, libs/engine/precision.py); the argmax and the calibration's softmax run on
    float32 logits.
    predictions_dir: write `<image id>.png` per image with the predicted raw label ids at the scoring resolution
    (a channel that is no class, such as CaGNet's dead one, is written as the void label 255); with save_colour
    also the colour and overlay pictures (`PredictionWriter`).
    all_reduce: sums the confusion matrix over processes in place (sharded evaluation), before scoring.
    Returns `gzsl_scores` of the matrix plus 'confusion': the int64 matrix (n, n + 1) itself (numpy).
    """
    if mode not in EVAL_MODES:
        raise ValueError(f"eval_mode must be one of {', '.join(EVAL_MODES)}, got {mode!r}")
    model.eval()
    n = splits.num_classes
    confusion = new_confusion(n, device)
    test_map = torch.tensor(np.array(splits.test_map), device=device)
    writer = PredictionWriter.for_splits(predictions_dir, splits, save_colour) if predictions_dir else None
    seen_classes = torch.arange(n) < splits.num_seen
    for batch in (progress(loader) if progress else loader):
        images, raw_labels, image_ids = batch[:3]
        originals = batch[3] if len(batch) > 3 else None
        if originals is None and (mode == "full" or save_colour):
            raise ValueError(f"{'eval_mode full' if mode == 'full' else 'colour predictions'} needs each test "
                             "image's original: build the test set with ZeroShotSegmentation(..., originals=True) "
                             "and batch it with libs.datasets.collate_test")
        images = images.to(device, non_blocking=True)
        with autocast():
            logits = model.predict(images)
        logits = logits.float()
        if mode == "full":
            for i, original in enumerate(originals):
                scores = logits[i, :n] if calibration else logits[i]
                pred = upsampled_ids(scores, original.size, seen_classes, calibration, max_upsample_elements)
                raw = torch.as_tensor(original.label, device=device)
                update_confusion(confusion, test_map[raw.clamp(0, len(test_map) - 1)], pred, n)
                if writer:
                    writer.write(image_ids[i], pred, original)
            continue
        if mode == "warped":
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        pred = predicted_ids(logits, splits.num_seen, n, calibration)
        raw_small = nearest_resize(raw_labels.to(device, non_blocking=True), pred.shape[-2:])
        gt = test_map[raw_small.clamp(0, len(test_map) - 1)]
        update_confusion(confusion, gt, pred, n)
        if writer:
            for i, image_id in enumerate(image_ids):
                writer.write(image_id, pred[i], originals[i] if originals is not None else None)
    if all_reduce is not None:
        all_reduce(confusion)
    confusion = confusion.cpu()
    return {**gzsl_scores(confusion, splits.num_seen), "confusion": confusion.numpy()}
