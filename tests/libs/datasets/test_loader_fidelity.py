"""The loader's random rescale and WARP_IMAGE False against the original's OpenCV calls (docs/method.md §6.3).

The reference `original_transform` below is written from the facts of the release's `_transform`
(libs/datasets/cocostuff.py): pre-scale with an explicit size (warp: base x base; else longer side base,
shorter side int(base * short / long)), rescale with `cv2.resize(..., None, fx=s, fy=s)`, pad each side to
max(its pre-scaled length, crop) (pad // 2 top/left, image 0, label 255), crop, flip. It draws its randomness
from the loader's stream in the loader's order (scale, crop row, crop column, flip coin).
"""
import os

import cv2
import numpy as np
import pytest
import torch

from libs.datasets import ZeroShotSegmentation, load_class_splits, load_split_list
from models.ops import nearest_resize, scaled_size
from tests.datagen import write_dataset, write_pair

MEAN = np.array([104.008, 116.669, 122.675])      # float64, as the original's


def original_prescaled_size(h, w, base, warp):
    """(out_h, out_w) of the original's pre-scaling."""
    if warp:
        return base, base
    if h > w:
        return base, int(base * w / h)
    return int(base * h / w), base


def original_transform(bgr, raw, base, crop, warp, scale_range, rng):
    """The original training transform with OpenCV, drawing from `rng` as the loader does. Returns image, raw."""
    out_h, out_w = original_prescaled_size(*raw.shape, base, warp)
    image = bgr.astype(np.float32)
    image -= MEAN                                          # in place: float64 difference, rounded to float32
    image = cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(raw.astype(np.int32), (out_w, out_h), interpolation=cv2.INTER_NEAREST)
    scale = rng.uniform(*scale_range)
    image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    h, w = label.shape
    pad_h, pad_w = max(max(out_h, crop) - h, 0), max(max(out_w, crop) - w, 0)
    if pad_h or pad_w:
        border = dict(top=pad_h // 2, bottom=pad_h - pad_h // 2, left=pad_w // 2, right=pad_w - pad_w // 2,
                      borderType=cv2.BORDER_CONSTANT)
        image = cv2.copyMakeBorder(image, value=(0.0, 0.0, 0.0), **border)
        label = cv2.copyMakeBorder(label, value=255, **border)
    h, w = label.shape
    y = int(rng.integers(0, h - crop + 1))
    x = int(rng.integers(0, w - crop + 1))
    image, label = image[y:y + crop, x:x + crop], label[y:y + crop, x:x + crop]
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return image, label


def _noise_dataset(tmp_path, sizes, seed=0):
    """A toy dataset whose images are pixel noise (so any resampling difference shows) of the given sizes."""
    toy = write_dataset(str(tmp_path), num_classes=6, seen=(1, 2, 3), unseen=(5, 4), image_size=sizes,
                        n_train=len(sizes), n_test=len(sizes), seed=seed)
    rng = np.random.default_rng([seed, 99])
    for subdir, stem in toy.train_entries + toy.test_entries:
        h, w = toy.labels[stem].shape
        image = rng.integers(0, 256, size=(h, w, 3)).astype(np.uint8)
        label = rng.integers(0, 6, size=(h, w)).astype(np.uint8)
        label[rng.random((h, w)) < 0.05] = 255
        write_pair(toy.root, subdir, stem, image, label)
        toy.labels[stem] = label
    return toy


def _dataset(toy, train, **kw):
    splits = load_class_splits(toy.datadir, toy.name)
    entries = load_split_list(toy.datadir, toy.name, 'train' if train else 'test')
    return ZeroShotSegmentation(toy.root, entries, splits, train=train, **kw), splits


def _read(toy, subdir, stem):
    bgr = cv2.imread(os.path.join(toy.root, 'images', subdir, stem + '.jpg')).astype(np.float32)
    return bgr, toy.labels[stem]


# ------------------------------------------------------------------ the one nearest helper, scale-factor form

def test_nearest_factor_form_on_a_known_row_and_against_opencv():
    row = np.array([[10, 11, 12, 13, 14]] * 5, dtype=np.int32)
    # fx = 0.75: 4 columns (round 3.75); source floor(i / 0.75) = 0, 1, 2, 4 (an explicit size 4 gives 0, 1, 2, 3)
    np.testing.assert_array_equal(nearest_resize(row, factor=0.75)[0], [10, 11, 12, 14])
    np.testing.assert_array_equal(nearest_resize(row, (4, 4))[0], [10, 11, 12, 13])
    # fx = 1.3: 6 columns (6.5 rounds half to even); floor(i / 1.3) never reaches the last column
    np.testing.assert_array_equal(nearest_resize(row, factor=1.3)[0], [10, 10, 11, 12, 13, 13])
    np.testing.assert_array_equal(nearest_resize(row, (6, 6))[0], [10, 10, 11, 12, 13, 14])
    for factor in (0.75, 1.3):
        np.testing.assert_array_equal(nearest_resize(row, factor=factor),
                                      cv2.resize(row, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST))


def test_nearest_factor_form_equals_opencv_on_random_sizes_and_factors():
    rng = np.random.default_rng(3)
    for _ in range(300):
        h, w = int(rng.integers(1, 120)), int(rng.integers(1, 120))
        factor = float(rng.uniform(0.5, 1.5)) if rng.random() < 0.8 else float(rng.uniform(0.99, 1.01))
        if min(scaled_size(h, factor), scaled_size(w, factor)) < 1:
            continue
        label = rng.integers(0, 256, size=(h, w)).astype(np.int32)
        expected = cv2.resize(label, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(nearest_resize(label, factor=factor), expected, err_msg=f"{h}x{w} {factor}")
        # the torch path (training labels, any device) picks the same pixels
        as_tensor = nearest_resize(torch.from_numpy(label).long(), factor=factor)
        np.testing.assert_array_equal(as_tensor.numpy(), expected)


def test_nearest_resize_arguments_are_checked():
    label = np.zeros((4, 4), np.int64)
    with pytest.raises(ValueError, match="exactly one of size and factor"):
        nearest_resize(label)
    with pytest.raises(ValueError, match="exactly one of size and factor"):
        nearest_resize(label, (2, 2), factor=0.5)
    with pytest.raises(ValueError, match=r"1x4 label map scaled by 0\.4 would have 0x2 pixels"):
        nearest_resize(np.zeros((1, 4), np.int64), factor=0.4)


# ------------------------------------------------------------------ the training rescale (spec §6.3 step 3)

@pytest.mark.parametrize("warp", [True, False])
def test_training_items_equal_the_original_opencv_transform(tmp_path, warp):
    # sizes with a shorter side that truncation and rounding bring to different lengths (65*41/56 = 47.6)
    toy = _noise_dataset(tmp_path, [(41, 56), (56, 41), (30, 30), (50, 44)], seed=int(warp))
    base, crop, scale_range, seed = 65, 49, (0.5, 1.5), 11
    ds, splits = _dataset(toy, True, base_size=base, crop_size=crop, warp=warp, scale_range=scale_range, seed=seed)
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        for index, (subdir, stem) in enumerate(toy.train_entries):
            image, label = ds[index]
            bgr, raw = _read(toy, subdir, stem)
            rng = np.random.default_rng([seed, epoch, index])
            exp_image, exp_raw = original_transform(bgr, raw, base, crop, warp, scale_range, rng)
            where = f"warp={warp} epoch={epoch} item {index} ({raw.shape[0]}x{raw.shape[1]})"
            np.testing.assert_array_equal(label.numpy(), splits.train_map[exp_raw], err_msg=where)
            np.testing.assert_allclose(image.numpy(), exp_image.transpose(2, 0, 1), atol=1e-3, err_msg=where)


def test_rescale_samples_at_the_factor_not_at_the_rounded_size(tmp_path):
    # base 65 at s = 0.75 -> 49 px (48.75 rounded); OpenCV's fx form reads source column floor(48 / 0.75) = 64
    # (the last one), an explicit 49-px size would read floor(48 * 65 / 49) = 63
    toy = _noise_dataset(tmp_path, [(65, 65)])
    subdir, stem = toy.train_entries[0]
    raw = np.tile(np.arange(65, dtype=np.uint8) % 4, (65, 1))   # raw 0..3: column c holds c % 4
    raw[:, 64] = 5                                              # only the last column is unseen raw 5
    write_pair(toy.root, subdir, stem, np.full((65, 65, 3), 90, np.uint8), raw)
    ds, splits = _dataset(toy, True, base_size=65, crop_size=49, scale_range=(0.75, 0.75), flip=False)
    _, label = ds[0]
    rng = np.random.default_rng([0, 0, 0])
    rng.uniform(0.75, 0.75)
    y, x = int(rng.integers(0, 17)), int(rng.integers(0, 17))   # padded to 65: 8 rows/cols of padding first
    scaled = cv2.resize(raw, None, fx=0.75, fy=0.75, interpolation=cv2.INTER_NEAREST)
    assert scaled.shape == (49, 49) and (scaled[:, 48] == 5).all()
    padded = np.full((65, 65), 255, np.int64)
    padded[8:57, 8:57] = scaled
    np.testing.assert_array_equal(label.numpy(), splits.train_map[padded[y:y + 49, x:x + 49]])


# ------------------------------------------------------------------ WARP_IMAGE False (spec §6.3 step 2, step 4)

def test_no_warp_prescale_truncates_the_shorter_side():
    assert original_prescaled_size(375, 500, 513, False) == (384, 513)   # 384.75 -> 384 (rounding gave 385)
    assert original_prescaled_size(500, 333, 513, False) == (513, 341)   # 341.658 -> 341
    assert original_prescaled_size(40, 40, 513, False) == (513, 513)


def test_no_warp_test_items_have_the_original_prescaled_size_and_pixels(tmp_path):
    toy = _noise_dataset(tmp_path, [(41, 56), (56, 41), (33, 33)])
    ds, _ = _dataset(toy, False, base_size=65, warp=False)
    shapes = []
    for index, (subdir, stem) in enumerate(toy.test_entries):
        image, label, image_id = ds[index]
        bgr, raw = _read(toy, subdir, stem)
        out_h, out_w = original_prescaled_size(*raw.shape, 65, False)
        shapes.append((out_h, out_w))
        assert image_id == stem and image.shape == (3, out_h, out_w) and label.shape == (out_h, out_w)
        np.testing.assert_array_equal(label.numpy(), cv2.resize(raw, (out_w, out_h), interpolation=cv2.INTER_NEAREST))
        np.testing.assert_allclose(image.numpy(), cv2.resize(bgr - MEAN, (out_w, out_h),
                                                             interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1),
                                   atol=1e-3)
    assert shapes == [(47, 65), (65, 47), (65, 65)]   # 65 * 41 / 56 = 47.59: truncated, not rounded to 48


def test_no_warp_pads_each_side_only_up_to_its_own_length_or_the_crop(tmp_path):
    # 41x56 -> 47x65; at scale 1 the rows are padded to the crop (49: 1 top, 1 bottom), the columns not at all
    # (65 >= 49), so every crop row lies within one row of the image; padding both sides to the base (65) as
    # with the warp would put up to 9 rows of 255 above the image
    toy = _noise_dataset(tmp_path, [(41, 56)])
    subdir, stem = toy.train_entries[0]
    raw = np.full((41, 56), 2, np.uint8)                        # seen raw 2 -> train id 1 everywhere
    write_pair(toy.root, subdir, stem, np.full((41, 56, 3), 90, np.uint8), raw)
    ds, _ = _dataset(toy, True, base_size=65, crop_size=49, warp=False, scale_range=(1.0, 1.0), flip=False)
    for seed in range(6):
        ds.seed = seed
        _, label = ds[0]
        expected = np.ones((49, 49), np.int64)
        expected[0] = expected[48] = 255
        np.testing.assert_array_equal(label.numpy(), expected, err_msg=f"seed {seed}")


def test_no_warp_rejects_an_image_whose_shorter_side_would_vanish(tmp_path):
    toy = _noise_dataset(tmp_path, [(2, 80)])
    ds, _ = _dataset(toy, False, base_size=20, warp=False)
    with pytest.raises(ValueError, match=r"\.jpg is 2x80 \(HxW\): with WARP_IMAGE False its shorter side would "
                                         r"become 0 pixels at base size 20"):
        ds[0]


def test_mean_subtraction_rounds_the_float64_difference_once(tmp_path):
    """The original subtracts its float64 mean in place from the float32 image; a float32 mean differs by 1 ulp
    for most pixel values."""
    values = np.arange(256, dtype=np.uint8)
    bgr = np.stack([np.tile(values, (16, 1))] * 3, axis=-1)                     # every value in every channel
    label = np.zeros((16, 256), np.uint8)
    toy = write_dataset(str(tmp_path), n_train=1, n_test=1)
    write_pair(toy.root, "val", "grid", bgr, label)
    splits = load_class_splits(toy.datadir, toy.name)
    data = ZeroShotSegmentation(toy.root, [("val", "grid")], splits, train=False, warp=False, base_size=256)
    image = data[0][0].numpy().transpose(1, 2, 0)
    read = cv2.imread(os.path.join(toy.root, "images", "val", "grid.jpg")).astype(np.float32)
    expected = read.copy()
    expected -= MEAN
    assert np.array_equal(image, expected)
    assert not np.array_equal(image, read - MEAN.astype(np.float32))            # the two roundings do differ
