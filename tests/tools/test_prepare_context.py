"""tools/prepare_context.py on tiny fake downloads in the public PASCAL-Context layouts.

Layouts written here (from the public release's pages and the code that reads it): trainval.tar.gz unpacks
to trainval/<stem>.mat (uint16 LabelMap, 0 = unlabeled, 1..459 = ids of labels.txt) beside labels.txt
('id: name' lines); 59_context_labels.tar.gz to 59_context_labels/<stem>.png with 59_labels.txt as a
separate download; the images come from VOCdevkit/VOC2010/JPEGImages.
"""
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from libs.datasets import ZeroShotSegmentation, load_class_splits
from libs.datasets.splits import read_class_names
from tests.datagen import write_split_list
from tests.e2e_config import ROOT
from tools import prepare_context
from tools.prepare_context import CLASS_NAMES, read_public_names, resolve_classes

REPO = ROOT
SHIPPED_CLASSES = os.path.join(REPO, 'dataset', 'context', 'labels_refined.txt')
LIST_PREFIX = '/users/pascal_context/annotations'   # like the shipped Context lists: no extension

# The 33 classes at their ids in the 459-class labels.txt (alphabetical; the dining table is 'table').
FULL_IDS = {'aeroplane': 2, 'bicycle': 23, 'bird': 25, 'boat': 31, 'bottle': 34, 'building': 44, 'bus': 45,
            'car': 59, 'cat': 65, 'ceiling': 68, 'chair': 72, 'cow': 98, 'dog': 113, 'floor': 158, 'grass': 187,
            'ground': 189, 'horse': 207, 'keyboard': 220, 'motorbike': 258, 'mountain': 259, 'person': 284,
            'pottedplant': 308, 'road': 324, 'sheep': 347, 'sky': 360, 'sofa': 368, 'table': 397, 'track': 415,
            'train': 416, 'tree': 420, 'tvmonitor': 427, 'wall': 440, 'water': 445}
FILLERS_459 = {1: 'accordion', 9: 'bag', 104: 'cup', 459: 'zebra'}
# A 59-class list: the 20 VOC classes first, then the others (an order unlike the 459 list's; matched by name)
NAMES_59 = ['aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow', 'diningtable',
            'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor', 'bag',
            'bed', 'bench', 'book', 'building', 'cabinet', 'ceiling', 'cloth', 'computer', 'cup', 'door', 'fence',
            'floor', 'flower', 'food', 'grass', 'ground', 'keyboard', 'light', 'mountain', 'mouse', 'curtain',
            'platform', 'sign', 'plate', 'road', 'rock', 'shelves', 'sidewalk', 'sky', 'snow', 'bedclothes',
            'track', 'tree', 'truck', 'wall', 'water', 'window', 'wood']

TRAIN, VAL = ['2008_000002', '2010_000007'], ['2008_000008']
SIZES = {'2008_000002': (12, 16), '2010_000007': (10, 10), '2008_000008': (9, 14)}


def _write_lines(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        f.write(''.join(line + '\n' for line in lines))


def _full_names():
    names = {i: f'thing{i}' for i in range(1, 460)}
    names.update(FILLERS_459)
    names.update({i: n for n, i in FULL_IDS.items()})
    return names


def _label(stem, values):
    """(H, W) map cycling through `values` column by column, so every value occurs."""
    h, w = SIZES[stem]
    return np.asarray(values)[np.arange(h * w).reshape(h, w) % len(values)]


def _fake_voc2010(root):
    for i, stem in enumerate(TRAIN + VAL):
        path = os.path.join(root, 'VOCdevkit', 'VOC2010', 'JPEGImages', stem + '.jpg')
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cv2.imwrite(path, np.full(SIZES[stem] + (3,), 40 + 50 * i, np.uint8))


def _split_dir(root, train=TRAIN, val=VAL):
    split = os.path.join(root, 'split')
    write_split_list(os.path.join(split, 'train_list.npy'), [('train', s) for s in train], LIST_PREFIX, ext='')
    write_split_list(os.path.join(split, 'test_list.npy'), [('val', s) for s in val], LIST_PREFIX, ext='')
    return split


def _fake_trainval(root):
    """trainval/<stem>.mat + labels.txt; returns the LabelMaps written."""
    from scipy.io import savemat
    names = _full_names()
    _write_lines(os.path.join(root, 'labels.txt'), [f'{i}: {names[i]}' for i in sorted(names)])
    # 0 unlabeled, table -> diningtable, pottedplant, tvmonitor, cup and accordion (outside the 33), ceiling, sky
    values = [0, 397, 308, 427, 104, 1, 68, 360, 2, 98]
    maps = {}
    for stem in TRAIN + VAL:
        maps[stem] = _label(stem, values).astype(np.uint16)
        os.makedirs(os.path.join(root, 'trainval'), exist_ok=True)
        savemat(os.path.join(root, 'trainval', stem + '.mat'), {'LabelMap': maps[stem]})
    return maps


def _read_png(out, subdir, stem):
    with Image.open(os.path.join(out, 'annotations', subdir, stem + '.png')) as pil:
        return pil.mode, np.array(pil)


def test_shipped_table_matches_the_shipped_class_lists():
    refined = read_class_names(SHIPPED_CLASSES)
    assert sorted(CLASS_NAMES) == sorted(refined[1:]) and len(CLASS_NAMES) == 33
    # dataset/context/labels.txt is the 33-class release's own 'id: name' list: the mapping is the identity
    shipped_33 = os.path.join(REPO, 'dataset', 'context', 'labels.txt')
    mapping = resolve_classes(refined, read_public_names(shipped_33), shipped_33)
    np.testing.assert_array_equal(mapping.lut, np.arange(34))


def test_prepare_from_the_459_class_trainval_release(tmp_path, capsys):
    dl = str(tmp_path / 'dl')
    maps = _fake_trainval(dl)
    _fake_voc2010(dl)
    split, out = _split_dir(str(tmp_path)), str(tmp_path / 'context')
    # --labels may name the unpacked folder holding trainval/ and labels.txt; --voc2010 may name VOCdevkit's parent
    code = prepare_context.main(['--labels', dl, '--voc2010', dl, '--out', out, '--split-dir', split])
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    assert 'wrote 2 train and 1 val images' in captured.out and "diningtable <- 'table' (397)" in captured.out
    assert captured.out.count('0 missing file(s)') == 2 and 'ok: every listed image' in captured.out
    # 0 -> 0, table -> 11, pottedplant -> 16, tvmonitor -> 20, cup/accordion -> 0, ceiling -> 33, sky -> 21,
    # aeroplane -> 1, cow -> 10
    lut = {0: 0, 397: 11, 308: 16, 427: 20, 104: 0, 1: 0, 68: 33, 360: 21, 2: 1, 98: 10}
    for subdir, stems in (('train', TRAIN), ('val', VAL)):
        for stem in stems:
            mode, label = _read_png(out, subdir, stem)
            assert mode == 'P' and label.dtype == np.uint8
            np.testing.assert_array_equal(label, np.vectorize(lut.get)(maps[stem]))
            image = os.path.join(out, 'images', subdir, stem + '.jpg')
            assert os.path.islink(image)
            assert os.path.samefile(image, os.path.join(dl, 'VOCdevkit', 'VOC2010', 'JPEGImages', stem + '.jpg'))
    # the result feeds the loader with the shipped Context splits: diningtable (seen) -> train id 8,
    # cow (unseen), unlabeled 0 and the classes outside the 33 -> ignored
    splits = load_class_splits(os.path.join(REPO, 'dataset'), 'context')
    ds = ZeroShotSegmentation(out, [('train', s) for s in TRAIN], splits, train=True, base_size=10, crop_size=10,
                              scale_range=(1.0, 1.0), flip=False)
    _, train_label = ds[1]                                        # 2010_000007, 10x10: no resampling at all
    np.testing.assert_array_equal(train_label.numpy(), splits.train_map[np.vectorize(lut.get)(maps[TRAIN[1]])])
    assert set(train_label.unique().tolist()) == {8, 12, 15, 28, 16, 0, 255}


@pytest.mark.slow
def test_prepare_from_a_59_class_png_release_by_module_command(tmp_path):
    dl = tmp_path / 'dl'
    _write_lines(str(dl / '59_labels.txt'), [f'{i}: {n}' for i, n in enumerate(NAMES_59, start=1)])
    # 0 other, 11 diningtable -> 11, 16 pottedplant -> 16, 21 bag -> 0, 27 ceiling -> 33, 50 sky -> 21, 59 wood -> 0
    values, lut = [0, 11, 16, 21, 27, 50, 59], {0: 0, 11: 11, 16: 16, 21: 0, 27: 33, 50: 21, 59: 0}
    maps = {}
    for stem in TRAIN + VAL:
        maps[stem] = _label(stem, values).astype(np.uint8)
        os.makedirs(dl / '59_context_labels', exist_ok=True)
        Image.fromarray(maps[stem], mode='L').save(dl / '59_context_labels' / (stem + '.png'))
    _fake_voc2010(str(dl))
    split, out = _split_dir(str(tmp_path)), tmp_path / 'context'
    # run as users do (python -m from the repository root); the names file is found beside the label folder
    run = subprocess.run([sys.executable, '-m', 'tools.prepare_context', '--labels', str(dl / '59_context_labels'),
                          '--voc2010', str(dl / 'VOCdevkit' / 'VOC2010'), '--out', str(out), '--split-dir', split,
                          '--mode', 'copy'], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"classes: {dl / '59_labels.txt'} (59 classes, 33 kept" in run.stdout
    for subdir, stems in (('train', TRAIN), ('val', VAL)):
        for stem in stems:
            np.testing.assert_array_equal(_read_png(str(out), subdir, stem)[1], np.vectorize(lut.get)(maps[stem]))
            image = out / 'images' / subdir / (stem + '.jpg')
            assert not image.is_symlink()
            assert image.read_bytes() == (dl / 'VOCdevkit' / 'VOC2010' / 'JPEGImages' / (stem + '.jpg')).read_bytes()


def test_table_entries_are_checked_against_both_lists():
    refined = read_class_names(SHIPPED_CLASSES)
    public = _full_names()
    with pytest.raises(ValueError, match=r"class table entry 'skyy' is not a class of the labels_refined\.txt"):
        resolve_classes(refined, public, 'labels.txt', {**CLASS_NAMES, 'skyy': ('sky',)})
    table = dict(CLASS_NAMES)
    table.pop('sky')
    with pytest.raises(ValueError, match=r"classes \['sky'\] of the labels_refined\.txt list have no entry"):
        resolve_classes(refined, public, 'labels.txt', table)
    with pytest.raises(ValueError, match=r"entry 'sky': none of its names \['skyy'\] is in labels\.txt "
                                         r"\(close: \['sky'\]\)"):
        resolve_classes(refined, public, 'labels.txt', {**CLASS_NAMES, 'sky': ('skyy',)})
    with pytest.raises(ValueError, match=r"entries 'sky' and 'grass' both map to 'sky' \(id 360\)"):
        resolve_classes(refined, public, 'labels.txt', {**CLASS_NAMES, 'grass': ('sky',)})
    duplicated = {**public, 460: 'sky'}
    with pytest.raises(ValueError, match=r"entry 'sky': 'sky' has several ids in labels\.txt \(\[360, 460\]\)"):
        resolve_classes(refined, duplicated, 'labels.txt')


def test_a_release_list_without_a_class_fails_before_any_file_is_written(tmp_path):
    dl = str(tmp_path / 'dl')
    _fake_trainval(dl)
    _fake_voc2010(dl)
    names = _full_names()
    names[220] = 'keyboards'
    _write_lines(os.path.join(dl, 'labels.txt'), [f'{i}: {names[i]}' for i in sorted(names)])
    out = str(tmp_path / 'context')
    with pytest.raises(ValueError, match=r"entry 'keyboard': none of its names \['keyboard'\] is in .*labels\.txt"):
        prepare_context.main(['--labels', os.path.join(dl, 'trainval'), '--voc2010', dl, '--out', out,
                              '--split-dir', _split_dir(str(tmp_path))])
    assert not os.path.exists(out)


def test_problems_are_reported_and_fail_the_run(tmp_path, capsys):
    from scipy.io import savemat
    dl = str(tmp_path / 'dl')
    _fake_trainval(dl)
    _fake_voc2010(dl)
    os.remove(os.path.join(dl, 'VOCdevkit', 'VOC2010', 'JPEGImages', TRAIN[1] + '.jpg'))             # no image
    savemat(os.path.join(dl, 'trainval', VAL[0] + '.mat'), {'LabelMap': np.full((9, 14), 460, np.uint16)})
    split = _split_dir(str(tmp_path), train=TRAIN + ['2010_999999'])                                 # no label map
    out = str(tmp_path / 'context')
    code = prepare_context.main(['--labels', dl, '--voc2010', dl, '--out', out, '--split-dir', split])
    captured = capsys.readouterr()
    assert code == 1
    assert 'wrote 1 train and 0 val images' in captured.out
    assert '3 listed image(s) could not be made' in captured.err
    assert f"train/{TRAIN[1]}: image " in captured.err and 'is missing' in captured.err
    assert "train/2010_999999: no label map" in captured.err
    assert f"val/{VAL[0]}: " in captured.err and "values [460] are neither 0 (unlabeled) nor ids" in captured.err
    assert '6 file(s) of the lists are missing' in captured.err
    assert os.path.isfile(os.path.join(out, 'annotations', 'train', TRAIN[0] + '.png'))
    # a label map of another size than its image is a problem too
    savemat(os.path.join(dl, 'trainval', TRAIN[0] + '.mat'), {'LabelMap': np.zeros((5, 5), np.uint16)})
    assert prepare_context.main(['--labels', dl, '--voc2010', dl, '--out', out, '--split-dir', split]) == 1
    assert f"label map {os.path.join(dl, 'trainval', TRAIN[0] + '.mat')} is 5x5 (HxW) but image" in \
        capsys.readouterr().err


def test_missing_inputs_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--labels .*: neither it nor its trainval/ holds \.mat or \.png"):
        prepare_context.main(['--labels', str(tmp_path), '--voc2010', str(tmp_path)])
    (tmp_path / 'trainval').mkdir()
    (tmp_path / 'trainval' / 'a.mat').write_bytes(b'')
    with pytest.raises(FileNotFoundError, match=r"no class list found .*pass --names"):
        prepare_context.main(['--labels', str(tmp_path), '--voc2010', str(tmp_path)])
    _write_lines(str(tmp_path / 'labels.txt'), ['1 aeroplane'])
    with pytest.raises(ValueError, match=r"labels\.txt, line 1: expected 'id: name', got '1 aeroplane'"):
        prepare_context.main(['--labels', str(tmp_path), '--voc2010', str(tmp_path)])
    _write_lines(str(tmp_path / 'labels.txt'), [f'{i}: {n}' for i, n in sorted(_full_names().items())])
    with pytest.raises(FileNotFoundError, match=r"--voc2010 .*: none of .*VOCdevkit/VOC2010/JPEGImages"):
        prepare_context.main(['--labels', str(tmp_path), '--voc2010', str(tmp_path)])
