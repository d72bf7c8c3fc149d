"""Evaluation modes (docs/method.md §7.1, §7.6): full resolution against hand-computed bilinear upsampling, the
feature and full modes on an image whose original size is the feature size, chunked upsampling, prediction files."""
import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from libs.datasets import ZeroShotSegmentation, collate_test, load_class_splits, load_split_list
from libs.engine.evaluation import evaluate, upsampled_ids
from libs.metrics import gzsl_scores
from libs.visualize import LEGEND_W, PAD, blend, label_palette
from models.ops import nearest_indices
from tests.datagen import write_dataset

CPU = torch.device("cpu")


class FixedLogits(torch.nn.Module):
    """A model whose `predict` returns the given logits (N, C, h, w), whatever the images."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def predict(self, images):
        assert images.shape[0] == self.logits.shape[0]
        return self.logits


def write_label(toy, stem, label):
    Image.fromarray(np.asarray(label, np.uint8), mode="L").save(f"{toy.root}/annotations/val/{stem}.png")


def make_test_set(toy, splits, base_size, originals=True, entries=None):
    entries = entries or load_split_list(toy.datadir, toy.name, "test")
    return ZeroShotSegmentation(toy.root, entries, splits, train=False, base_size=base_size, originals=originals)


def loader_of(data, batch_size=2):
    return torch.utils.data.DataLoader(data, batch_size=batch_size, collate_fn=collate_test if data.originals else None)


@pytest.fixture
def hand_built(tmp_path):
    """Two test images of different sizes in one batch, 2x2 logits each, labels written by hand.

    Toy classes: seen raw 1, 2, 3 -> test ids 0, 1, 2; unseen raw 5, 4 -> test ids 3, 4; 6 channels (5 = dead).
    Only test ids 0 (channel a) and 3 (channel b) have logits above -10.
    """
    toy = write_dataset(str(tmp_path), n_train=2, n_test=2, image_size=[(4, 4), (2, 6)])
    splits = load_class_splits(toy.datadir, toy.name)
    (_, stem_a), (_, stem_b) = toy.test_entries
    # image A, 4x4: raw 1 on the top-left 2x2 block, raw 5 elsewhere
    label_a = np.full((4, 4), 5)
    label_a[:2, :2] = 1
    # image B, 2x6: raw 1 in columns 0-1, raw 5 in columns 2-5 except background (raw 0) and void at column 5
    label_b = np.full((2, 6), 5)
    label_b[:, :2] = 1
    label_b[0, 5], label_b[1, 5] = 0, 255
    write_label(toy, stem_a, label_a)
    write_label(toy, stem_b, label_b)
    logits = torch.full((2, 6, 2, 2), -10.0)
    logits[0, 0] = torch.tensor([[0.5, 0.0], [0.0, 0.0]])
    logits[0, 3] = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    logits[1, 0] = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    logits[1, 3] = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    return toy, splits, FixedLogits(logits), (stem_a, stem_b)


def test_full_mode_scores_the_bilinear_upsampled_argmax_at_the_original_size(hand_built, tmp_path):
    toy, splits, model, (stem_a, stem_b) = hand_built
    # Bilinear (align_corners=False) weights of source index 0 for 2 -> 4: output i samples source (i + .5) / 2 - .5
    # clamped at 0, so w0 = 1, .75, .25, 0. Image A: a = .5 * w0(i) w0(j), b = 1 - w0(i) w0(j): a wins where
    # w0(i) w0(j) > 2/3, i.e. at (0, 0), (0, 1), (1, 0) (.5625 at (1, 1) loses).
    pred_a = np.full((4, 4), 5)
    pred_a[0, :2] = pred_a[1, 0] = 1
    # Image B, 2 -> 6 columns: w0 = 1, 1, 2/3, 1/3, 0, 0 (rows 2 -> 2 are the identity): a wins in columns 0-2.
    pred_b = np.full((2, 6), 5)
    pred_b[:, :3] = 1
    # The 2x2 argmax (feature mode) of image A is raw 1 at (0, 0) only; nearest-upsampled it would give the whole
    # top-left block: the upsampled argmax differs from the feature-resolution one at (1, 1).
    feature_a = model.logits[0].argmax(0).numpy()
    assert feature_a.tolist() == [[0, 3], [3, 3]]
    assert np.repeat(np.repeat(feature_a, 2, 0), 2, 1)[1, 1] == 0 and pred_a[1, 1] == 5

    full = evaluate(model, loader_of(make_test_set(toy, splits, base_size=4)), splits, CPU, mode="full",
                    predictions_dir=str(tmp_path / "full"))
    expected = np.zeros((5, 6), np.int64)
    expected[0, 0] = 3 + 4          # A: 3 of the 4 raw-1 pixels; B: columns 0-1 of both rows
    expected[0, 3] = 1              # A: (1, 1)
    expected[3, 0] = 2              # B: column 2 of both rows
    expected[3, 3] = 12 + 4         # A: the 12 raw-5 pixels; B: columns 3-4 (column 5 is background / void)
    assert np.array_equal(full["confusion"], expected)
    reference = gzsl_scores(expected, 3)
    for key in ("hIoU", "mIoU", "pixel_acc", "mean_acc", "freqw_acc", "mean_acc_unseen"):
        assert full[key] == pytest.approx(reference[key], nan_ok=True), key
    assert np.array_equal(np.array(Image.open(tmp_path / "full" / f"{stem_a}.png")), pred_a)
    assert np.array_equal(np.array(Image.open(tmp_path / "full" / f"{stem_b}.png")), pred_b)

    # Feature mode on the same logits: GT = raw label -> warped 4x4 (nearest) -> 2x2 (nearest).
    # A: rows/cols 0, 2 of the label; B (2x6 warped to 4x4, then 2x2): rows 0, 1 and columns 0, 3.
    feature = evaluate(model, loader_of(make_test_set(toy, splits, base_size=4, originals=False)), splits, CPU)
    expected_feature = np.zeros((5, 6), np.int64)
    expected_feature[0, 0], expected_feature[3, 3] = 1 + 2, 3 + 2
    assert np.array_equal(feature["confusion"], expected_feature)
    assert feature["mIoU"] == 1.0 and full["mIoU"] < 1.0


def test_full_mode_calibration_and_missing_originals_error(hand_built):
    toy, splits, model, _ = hand_built
    data = make_test_set(toy, splits, base_size=4)
    # gamma 0.9 removes 0.9 of probability from every seen class: the unseen test id 3 wins every pixel
    calibrated = evaluate(model, loader_of(data), splits, CPU, mode="full", calibration=0.9)
    assert calibrated["confusion"][:, 3].sum() == calibrated["confusion"].sum() == 26
    with pytest.raises(ValueError, match="originals=True"):
        evaluate(model, loader_of(make_test_set(toy, splits, base_size=4, originals=False)), splits, CPU, mode="full")


def test_feature_and_full_modes_on_an_image_the_size_of_the_feature_map(tmp_path, tiny_model):
    """What "the two modes agree" means: a 65x65 image is warped to 513x513, whose feature map is 65x65 again.

    * Predictions: upsampling 65x65 logits to the original 65x65 is the identity, so both modes predict the same
      map, pixel for pixel.
    * Ground truth: full mode scores the raw label itself; feature mode scores the label sampled through the warp
      and back, nearest 65 -> 513 -> 65, whose source index is floor(floor(j * 513/65) * 65/513) = max(j - 1, 0):
      the original protocol's ground truth is the label shifted by one pixel down and right. So the confusion
      matrices are equal exactly when the label is invariant under that shift (a one-class image), and differ by
      the shift otherwise.
    """
    toy = write_dataset(str(tmp_path), n_train=1, n_test=2, image_size=(65, 65))
    splits = load_class_splits(toy.datadir, toy.name)
    (_, stem_mixed), (_, stem_uniform) = toy.test_entries
    write_label(toy, stem_uniform, np.full((65, 65), 2))
    round_trip = nearest_indices(65, 513)[nearest_indices(513, 65)]      # source index of 65 -> 513 -> 65
    assert round_trip.tolist() == [0] + list(range(64))
    with torch.no_grad():
        assert tiny_model().eval().predict(torch.zeros(1, 3, 513, 513)).shape[-2:] == (65, 65)
    # logits that vary from pixel to pixel, so that any misplaced ground-truth pixel changes the matrices
    model = FixedLogits(torch.randn(2, 6, 65, 65, generator=torch.Generator().manual_seed(0)))

    entries = load_split_list(toy.datadir, toy.name, "test")
    data = make_test_set(toy, splits, base_size=513)
    full = evaluate(model, loader_of(data), splits, CPU, mode="full", predictions_dir=str(tmp_path / "full"))
    feature = evaluate(model, loader_of(data), splits, CPU, predictions_dir=str(tmp_path / "feature"))
    test_map = np.asarray(splits.test_map)
    expected_full, expected_feature = np.zeros((5, 6), np.int64), np.zeros((5, 6), np.int64)
    for _, stem in entries:
        pred_full = np.array(Image.open(tmp_path / "full" / f"{stem}.png"))
        pred_feature = np.array(Image.open(tmp_path / "feature" / f"{stem}.png"))
        assert pred_full.shape == pred_feature.shape == (65, 65)
        assert np.array_equal(pred_full, pred_feature), stem
        pred = test_map[pred_full]
        label = np.array(Image.open(f"{toy.root}/annotations/val/{stem}.png")).astype(np.int64)
        shifted = label[round_trip][:, round_trip]
        for matrix, gt in ((expected_full, test_map[label]), (expected_feature, test_map[shifted])):
            keep = gt < 5
            np.add.at(matrix, (gt[keep], np.where(pred[keep] < 5, pred[keep], 5)), 1)
    assert np.array_equal(full["confusion"], expected_full)
    assert np.array_equal(feature["confusion"], expected_feature)
    assert not np.array_equal(expected_full, expected_feature)     # the mixed label is not shift-invariant

    uniform = make_test_set(toy, splits, base_size=513, entries=[e for e in entries if e[1] == stem_uniform])
    model.logits = model.logits[1:]
    one_full = evaluate(model, loader_of(uniform), splits, CPU, mode="full")
    one_feature = evaluate(model, loader_of(uniform), splits, CPU)
    assert np.array_equal(one_full["confusion"], one_feature["confusion"])
    assert one_full["confusion"].sum() == 65 * 65


def test_chunked_upsampling_equals_one_piece():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5, 6, generator=g)
    logits[4] = logits[1]                              # an exact tie: the earlier channel must win in both
    size = (23, 17)
    one_piece = upsampled_ids(logits, size)
    for budget in (23 * 17, 2 * 23 * 17, 3 * 23 * 17):
        assert torch.equal(upsampled_ids(logits, size, max_elements=budget), one_piece), budget
    assert (one_piece != 4).all()
    seen = torch.arange(7) < 4
    calibrated = upsampled_ids(logits, size, seen, calibration=0.3)
    assert not torch.equal(calibrated, one_piece)
    assert torch.equal(upsampled_ids(logits, size, seen, calibration=0.3, max_elements=2 * 23 * 17), calibrated)
    with pytest.raises(ValueError, match="seen channels"):
        upsampled_ids(logits, size, calibration=0.3)


def test_colour_predictions_use_the_palette_and_overlay_the_image(hand_built, tmp_path):
    toy, splits, model, (stem_a, stem_b) = hand_built
    out = tmp_path / "pred"
    evaluate(model, loader_of(make_test_set(toy, splits, base_size=4)), splits, CPU, mode="full",
             predictions_dir=str(out), save_colour=True)
    palette = label_palette()
    for stem in (stem_a, stem_b):
        raw = np.array(Image.open(out / f"{stem}.png"))
        colour = np.array(Image.open(out / "colour" / f"{stem}.png"))[..., ::-1]      # RGB -> BGR
        assert np.array_equal(colour, palette[raw])
        overlay = cv2.imread(str(out / "overlay" / f"{stem}.png"), cv2.IMREAD_COLOR)
        image = cv2.imread(f"{toy.root}/images/val/{stem}.jpg", cv2.IMREAD_COLOR)
        factor = -(-256 // max(raw.shape))             # enlarged to a 256-pixel longer side, legend beside it
        h, w = raw.shape[0] * factor, raw.shape[1] * factor
        blended = cv2.resize(blend(image, raw), (w, h), interpolation=cv2.INTER_NEAREST)
        # the input, the blended prediction beside it, then the legend
        assert np.array_equal(overlay[PAD:PAD + h, PAD:PAD + w], cv2.resize(image, (w, h),
                                                                             interpolation=cv2.INTER_NEAREST))
        assert np.array_equal(overlay[PAD:PAD + h, 2 * PAD + w:2 * PAD + 2 * w], blended)
        assert overlay.shape[1] == 2 * w + 3 * PAD + LEGEND_W
        # blending: half image, half class colour where a class is predicted
        y, x = 0, 0
        assert np.allclose(blended[y, x].astype(float), (image[y, x] / 2 + palette[raw[y, x]] / 2), atol=1)
