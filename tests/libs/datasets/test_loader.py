"""The zero-shot loader (docs/method.md §6.3) on tiny datasets written in the real layout, and the sampler."""
import os

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from libs.datasets import EpochPermutationSampler, ZeroShotSegmentation, load_class_splits, load_split_list
from tests.datagen import write_dataset, write_pair

MEAN = np.array([104.008, 116.669, 122.675], dtype=np.float32)


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    # seen raw 1,2,3 -> train ids 0,1,2; unseen raw 5,4; background 0 and void 255 ignored
    return write_dataset(str(tmp_path_factory.mktemp('data')), num_classes=6, seen=(1, 2, 3), unseen=(5, 4),
                         image_size=[(40, 56), (70, 50), (33, 33)], n_train=6, n_test=3, seed=1)


def _make(toy, train, **kw):
    splits = load_class_splits(toy.datadir, toy.name)
    entries = load_split_list(toy.datadir, toy.name, 'train' if train else 'test')
    kw.setdefault('base_size', 65)
    kw.setdefault('crop_size', 49)
    return ZeroShotSegmentation(toy.root, entries, splits, train=train, **kw)


def _expected_test_pair(toy, index, base):
    subdir, stem = toy.test_entries[index]
    bgr = cv2.imread(os.path.join(toy.root, 'images', subdir, stem + '.jpg')).astype(np.float32) - MEAN
    image = cv2.resize(bgr, (base, base), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    label = cv2.resize(toy.labels[stem], (base, base), interpolation=cv2.INTER_NEAREST)
    return image, label


def test_train_items_shapes_dtypes_and_label_set(toy):
    ds = _make(toy, train=True)
    assert len(ds) == 6
    seen_values = set()
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.shape == (3, 49, 49) and image.dtype == torch.float32
        assert label.shape == (49, 49) and label.dtype == torch.int64
        seen_values |= set(label.unique().tolist())
        # mean-subtracted BGR: values lie within [0 - mean, 255 - mean] (bilinear keeps the range)
        assert image.min() >= -122.675 - 1e-3 and image.max() <= 255 - 104.008 + 1e-3
    assert seen_values <= {0, 1, 2, 255}
    assert 255 in seen_values and len(seen_values & {0, 1, 2}) >= 2


def test_train_identity_transform_maps_raw_to_train_ids(tmp_path):
    toy = write_dataset(str(tmp_path), n_train=1, n_test=1, image_size=(20, 20))
    raw = np.zeros((20, 20), dtype=np.uint8)
    raw[:10, 10:] = 1   # seen   -> 0
    raw[10:, :10] = 3   # seen   -> 2
    raw[10:, 10:] = 4   # unseen -> 255
    raw[5] = 255        # void   -> 255 ; background 0 -> 255
    image = np.full((20, 20, 3), 100, dtype=np.uint8)
    subdir, stem = toy.train_entries[0]
    write_pair(toy.root, subdir, stem, image, raw, palette=True)
    ds = _make(toy, train=True, base_size=20, crop_size=20, scale_range=(1.0, 1.0), flip=False)
    img, label = ds[0]
    expected = np.full((20, 20), 255)
    expected[:10, 10:] = 0
    expected[10:, :10] = 2
    expected[5] = 255
    np.testing.assert_array_equal(label.numpy(), expected)
    bgr = cv2.imread(os.path.join(toy.root, 'images', subdir, stem + '.jpg')).astype(np.float32) - MEAN
    np.testing.assert_allclose(img.numpy(), bgr.transpose(2, 0, 1), atol=1e-4)


def test_scaled_down_image_is_padded_top_left_half_with_zero_and_255(tmp_path):
    toy = write_dataset(str(tmp_path), n_train=1, n_test=1, image_size=(30, 30))
    subdir, stem = toy.train_entries[0]
    raw = np.full((30, 30), 2, dtype=np.uint8)  # seen raw 2 -> train id 1 everywhere
    write_pair(toy.root, subdir, stem, np.full((30, 30, 3), 200, np.uint8), raw)
    # base 65, scale 0.4 -> round(26.0) = 26 px; pad 39 = 19 top/left + 20 bottom/right; crop 65 at (0, 0)
    ds = _make(toy, train=True, base_size=65, crop_size=65, scale_range=(0.4, 0.4), flip=False)
    image, label = ds[0]
    assert image.shape == (3, 65, 65)
    inside = np.zeros((65, 65), dtype=bool)
    inside[19:45, 19:45] = True
    assert (label.numpy()[inside] == 1).all() and (label.numpy()[~inside] == 255).all()
    assert (image.numpy()[:, ~inside] == 0).all()
    assert (image.numpy()[:, inside] > 50).all()  # 200 - mean > 50 in every channel


def test_crop_larger_than_base_pads_to_crop(toy):
    ds = _make(toy, train=True, base_size=33, crop_size=40, scale_range=(1.0, 1.0), flip=False)
    image, label = ds[0]
    assert image.shape == (3, 40, 40) and label.shape == (40, 40)
    # 33 px of content in a 40 px canvas: 3 rows/columns of padding top/left, 4 bottom/right, crop at (0, 0)
    pad = np.ones((40, 40), dtype=bool)
    pad[3:36, 3:36] = False
    assert (label.numpy()[pad] == 255).all() and (image.numpy()[:, pad] == 0).all()
    assert (image.numpy()[:, ~pad] != 0).any(axis=0).all()


def test_flip_mirrors_the_same_crop(toy):
    plain = _make(toy, train=True, flip=False, seed=5)
    flipped = _make(toy, train=True, flip=True, seed=5)
    n_flipped = 0
    for i in range(len(plain)):
        (a, la), (b, lb) = plain[i], flipped[i]
        if torch.equal(la, lb) and torch.equal(a, b):
            continue
        assert torch.equal(a.flip(-1), b) and torch.equal(la.flip(-1), lb)
        n_flipped += 1
    assert 0 < n_flipped < len(plain)


def test_determinism_seed_epoch_and_workers(toy):
    ds = _make(toy, train=True, seed=7)
    again = _make(toy, train=True, seed=7)
    other = _make(toy, train=True, seed=8)
    for i in range(3):
        assert torch.equal(ds[i][0], again[i][0]) and torch.equal(ds[i][1], again[i][1])
    assert any(not torch.equal(ds[i][0], other[i][0]) for i in range(3))
    first = [ds[i][0] for i in range(3)]
    ds.set_epoch(1)
    assert any(not torch.equal(first[i], ds[i][0]) for i in range(3))
    ds.set_epoch(0)
    assert all(torch.equal(first[i], ds[i][0]) for i in range(3))

    def batches(num_workers):
        sampler = EpochPermutationSampler(len(ds), seed=7)
        sampler.set_epoch(2)
        ds.set_epoch(2)
        loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=sampler, num_workers=num_workers)
        return [b for b in loader]

    single, multi = batches(0), batches(2)
    assert len(single) == 3
    for (xa, ya), (xb, yb) in zip(single, multi):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_test_items_are_warped_to_base_with_raw_labels_and_ids(toy):
    ds = _make(toy, train=False, base_size=65)
    assert len(ds) == 3
    for i in range(3):
        image, label, image_id = ds[i]
        assert image.shape == (3, 65, 65) and image.dtype == torch.float32
        assert label.shape == (65, 65) and label.dtype == torch.int64
        assert image_id == toy.test_entries[i][1]
        exp_image, exp_label = _expected_test_pair(toy, i, 65)
        np.testing.assert_array_equal(label.numpy(), exp_label)   # raw values, OpenCV nearest
        np.testing.assert_allclose(image.numpy(), exp_image, atol=1e-4)
    assert set(ds[0][1].unique().tolist()) <= {0, 1, 2, 3, 4, 5, 255}
    assert 255 in set(torch.cat([ds[i][1].flatten() for i in range(3)]).tolist())


def test_label_warp_equals_opencv_nearest_on_known_grid(tmp_path):
    toy = write_dataset(str(tmp_path), n_train=1, n_test=1, image_size=(2, 2))
    subdir, stem = toy.test_entries[0]
    write_pair(toy.root, subdir, stem, np.zeros((2, 2, 3), np.uint8), np.array([[1, 2], [3, 4]], np.uint8))
    ds = _make(toy, train=False, base_size=5)
    _, label, _ = ds[0]
    # OpenCV INTER_NEAREST picks source index floor(i * 2 / 5) = 0, 0, 0, 1, 1
    expected = np.array([[1, 1, 1, 2, 2]] * 3 + [[3, 3, 3, 4, 4]] * 2)
    np.testing.assert_array_equal(label.numpy(), expected)
    np.testing.assert_array_equal(expected, cv2.resize(np.array([[1, 2], [3, 4]], np.uint8), (5, 5),
                                                       interpolation=cv2.INTER_NEAREST))


def test_non_warp_keeps_aspect(toy):
    ds = _make(toy, train=False, base_size=65, warp=False)
    image, label, _ = ds[0]            # 40x56 -> 46x65
    assert image.shape == (3, 46, 65) and label.shape == (46, 65)
    image, label, _ = ds[1]            # 70x50 -> 65x46
    assert image.shape == (3, 65, 46)
    train = _make(toy, train=True, base_size=65, crop_size=49, warp=False, scale_range=(0.5, 0.5))
    image, label = train[0]            # 46x65 * 0.5 = 23x32 (round 32.5 -> 32), padded to 65, cropped 49
    assert image.shape == (3, 49, 49)


def test_ignore_index_is_configurable(toy):
    a = _make(toy, train=True, seed=3)
    b = _make(toy, train=True, seed=3, ignore_index=-1)
    la, lb = a[0][1], b[0][1]
    assert torch.equal(la == 255, lb == -1) and torch.equal(la[la != 255], lb[lb != -1])


def test_repr_and_len(toy):
    ds = _make(toy, train=False)
    assert repr(ds).startswith("ZeroShotSegmentation(dataset='toy'") and 'mode=test' in repr(ds)
    assert 'items=3' in repr(ds)


def test_missing_root_states_layout_and_readme_section(toy, tmp_path):
    splits = load_class_splits(toy.datadir, toy.name)
    with pytest.raises(FileNotFoundError) as err:
        ZeroShotSegmentation(str(tmp_path / 'nowhere'), toy.train_entries, splits, train=True)
    msg = str(err.value)
    assert 'nowhere' in msg and 'config key ROOT' in msg
    assert 'images/<subdir>/<stem>.jpg' in msg and 'annotations/<subdir>/<stem>.png' in msg
    assert 'dataset/README.md, section "Images and annotations"' in msg
    with pytest.raises(FileNotFoundError, match=r"images/train2017 does not exist .* subdir 'train2017'"):
        ZeroShotSegmentation(toy.root, [('train2017', 'x')], splits, train=True)
    with pytest.raises(ValueError, match="the list of images is empty"):
        ZeroShotSegmentation(toy.root, [], splits, train=True)


def test_entry_errors_name_the_file(tmp_path):
    toy = write_dataset(str(tmp_path), n_train=4, n_test=1, image_size=(20, 24))
    root = toy.root
    (s0, t0), (s1, t1), (s2, t2), (s3, t3) = toy.train_entries
    os.remove(os.path.join(root, 'images', s0, t0 + '.jpg'))
    with open(os.path.join(root, 'images', s1, t1 + '.jpg'), 'wb') as f:
        f.write(b'this is not a jpeg')
    Image.fromarray(np.zeros((10, 24), np.uint8)).save(os.path.join(root, 'annotations', s2, t2 + '.png'))
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(os.path.join(root, 'annotations', s3, t3 + '.png'))
    ds = _make(toy, train=True)
    with pytest.raises(FileNotFoundError, match=rf"image .*{t0}\.jpg of list entry 'train/{t0}' does not exist"):
        ds[0]
    with pytest.raises(ValueError, match=rf"image .*{t1}\.jpg of list entry .* could not be decoded"):
        ds[1]
    with pytest.raises(ValueError) as err:
        ds[2]
    assert f'{t2}.png is 10x24 (HxW)' in str(err.value) and f'{t2}.jpg is 20x24' in str(err.value)
    with pytest.raises(ValueError, match=rf"{t3}\.png has PIL mode 'RGB'; expected a single-channel"):
        ds[3]
    os.remove(os.path.join(root, 'annotations', s3, t3 + '.png'))
    with pytest.raises(FileNotFoundError, match=rf"annotation .*{t3}\.png of list entry .* does not exist"):
        ds[3]
    with pytest.raises(IndexError):
        ds[4]


def test_epoch_permutation_sampler_is_fresh_per_epoch_and_resumable():
    sampler = EpochPermutationSampler(10, seed=3)
    epoch0 = list(sampler)
    assert sorted(epoch0) == list(range(10)) and len(sampler) == 10
    assert epoch0 == np.random.default_rng([3, 0]).permutation(10).tolist()
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert sorted(epoch1) == list(range(10)) and epoch1 != epoch0
    sampler.set_epoch(1, start=4)
    assert list(sampler) == epoch1[4:] and len(sampler) == 6
    again = EpochPermutationSampler(10, seed=3)
    again.set_epoch(1)
    assert list(again) == epoch1
    assert all(isinstance(i, int) for i in epoch1)
    with pytest.raises(ValueError, match="start must be in 0..10"):
        sampler.set_epoch(0, start=11)
