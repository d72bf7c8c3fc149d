"""Data tools on tiny fake downloads in the official archive layouts."""
import os
import pickle
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from libs.datasets import ZeroShotSegmentation, load_class_splits, load_split_list
from tests.datagen import make_image, toy_palette, write_dataset, write_split_list
from tests.e2e_config import ROOT
from tools import build_word_vectors, make_split_list, prepare_cocostuff, prepare_voc12
from tools.split_lists import build_split_list, verify_split_list

REPO = ROOT


def _jpg(path, h=16, w=16, value=90):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, np.full((h, w, 3), value, np.uint8))


def _png(path, label, palette=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pil = Image.fromarray(label.astype(np.uint8), mode='L')
    if palette:
        pil = pil.convert('P')
        pil.putpalette(toy_palette())
    pil.save(path)


def _lines(path, stems):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write(''.join(s + '\n' for s in stems))


# ---------------------------------------------------------------- make_split_list


def test_build_and_verify_split_list(tmp_path, capsys):
    toy = write_dataset(str(tmp_path), n_train=3, n_test=1)
    ann = os.path.join(toy.root, 'annotations')
    stems = sorted(t for _, t in toy.train_entries)
    _png(os.path.join(ann, 'train', 'orphan.png'), np.zeros((4, 4)))  # annotation without image
    entries, without = build_split_list(ann, 'train')
    assert entries == [f"{ann}/train/{s}.png" for s in stems]
    assert without == ['orphan']

    out = str(tmp_path / 'list.npy')
    assert make_split_list.main(['--annotations', ann, '--subdir', 'train', '--out', out]) == 0
    saved = np.load(out, allow_pickle=False)
    assert saved.dtype.kind == 'U' and saved.tolist() == entries
    captured = capsys.readouterr()
    assert '1 annotation(s)' in captured.err and 'orphan' in captured.err

    assert make_split_list.main(['--verify', out, '--root', toy.root]) == 0
    os.remove(os.path.join(toy.root, 'images', 'train', stems[1] + '.jpg'))
    problems = verify_split_list(out, toy.root)
    assert problems == [f"{entries[1]}: image {os.path.join(toy.root, 'images', 'train', stems[1] + '.jpg')} "
                        f"is missing"]
    assert make_split_list.main(['--verify', out, '--root', toy.root]) == 1
    assert '1 missing file(s)' in capsys.readouterr().out


@pytest.mark.slow
def test_make_split_list_runs_as_a_script(tmp_path):
    toy = write_dataset(str(tmp_path), n_train=2, n_test=1)
    out = str(tmp_path / 'sub' / 'train_list.npy')
    res = subprocess.run([sys.executable, '-m', 'tools.make_split_list', '--annotations',
                          os.path.join(toy.root, 'annotations'), '--subdir', 'train', '--out', out],
                         cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert 'wrote 2 entries' in res.stdout
    assert len(np.load(out)) == 2


def test_made_coco_train_list_feeds_the_loader(tmp_path):
    # the missing COCO-Stuff train list, rebuilt with the tool, is read by load_split_list and the loader
    datadir = str(tmp_path)
    base = os.path.join(datadir, 'cocostuff')
    shutil.copytree(os.path.join(REPO, 'dataset', 'cocostuff'), base,
                    ignore=shutil.ignore_patterns('images', 'annotations', 'test_list.npy'))
    rng = np.random.default_rng(0)
    for i, values in enumerate([(0, 20, 255), (3, 181, 171)]):
        label = np.full((24, 30), values[0], np.uint8)
        label[8:, :15] = values[1]
        label[:, 25:] = values[2]
        stem = f"{i + 9:012d}"
        _png(os.path.join(base, 'annotations', 'train2017', stem + '.png'), label)
        os.makedirs(os.path.join(base, 'images', 'train2017'), exist_ok=True)
        cv2.imwrite(os.path.join(base, 'images', 'train2017', stem + '.jpg'),
                    make_image(label, np.full((182, 3), 60, np.uint8), rng))
    out = os.path.join(base, 'split', 'train_list.npy')
    assert make_split_list.main(['--annotations', os.path.join(base, 'annotations'), '--subdir', 'train2017',
                                 '--out', out]) == 0
    entries = load_split_list(datadir, 'cocostuff', 'train')
    assert entries == [('train2017', '000000000009'), ('train2017', '000000000010')]
    splits = load_class_splits(datadir, 'cocostuff', num_unseen=15, out_dim_cls=183)
    ds = ZeroShotSegmentation(base, entries, splits, train=True, base_size=33, crop_size=33,
                              scale_range=(1.0, 1.0), flip=False)
    _, label0 = ds[0]
    _, label1 = ds[1]
    # raw 0 person -> 0, raw 20 cow (unseen) -> 255; raw 3 motorcycle -> 155, 181 -> 154, 171 (unseen) -> 255
    assert set(label0.unique().tolist()) == {0, 255}
    assert set(label1.unique().tolist()) == {155, 154, 255}


# ---------------------------------------------------------------- prepare_voc12


def _fake_voc_download(root):
    """VOCdevkit/VOC2012 + benchmark_RELEASE/dataset with overlapping image sets."""
    voc = os.path.join(root, 'VOCdevkit', 'VOC2012')
    sbd = os.path.join(root, 'benchmark_RELEASE', 'dataset')
    voc_train, voc_val = ['2007_000001', '2007_000002'], ['2007_000003', '2007_000004']
    sbd_train, sbd_val = ['2008_000001', '2008_000002', '2007_000003', '2007_000001'], ['2008_000003']
    voc_labels = {}
    for i, stem in enumerate(voc_train + voc_val):
        label = np.full((16, 16), i + 1, np.uint8)
        label[0] = 255  # VOC's void border
        label[6:] = 0
        _png(os.path.join(voc, 'SegmentationClass', stem + '.png'), label, palette=True)
        voc_labels[stem] = label
    sbd_labels = {}
    from scipy.io import savemat
    for i, stem in enumerate(sbd_train + sbd_val):
        seg = np.full((16, 16), 10 + i, np.uint8)
        seg[:, :4] = 0
        os.makedirs(os.path.join(sbd, 'cls'), exist_ok=True)
        savemat(os.path.join(sbd, 'cls', stem + '.mat'),
                {'GTcls': {'Segmentation': seg, 'Boundaries': np.zeros((20, 1), dtype=object),
                           'CategoriesPresent': np.array([10 + i], np.uint8)}})
        sbd_labels[stem] = seg
    for stem in set(voc_train + voc_val + sbd_train + sbd_val) - {'2008_000003'}:
        _jpg(os.path.join(voc, 'JPEGImages', stem + '.jpg'))
    _jpg(os.path.join(sbd, 'img', '2008_000003.jpg'), value=30)  # only in SBD's img/
    _lines(os.path.join(voc, 'ImageSets', 'Segmentation', 'train.txt'), voc_train)
    _lines(os.path.join(voc, 'ImageSets', 'Segmentation', 'val.txt'), voc_val)
    _lines(os.path.join(sbd, 'train.txt'), sbd_train)
    _lines(os.path.join(sbd, 'val.txt'), sbd_val)
    return voc_labels, sbd_labels


def test_prepare_voc12_from_fake_download(tmp_path, capsys):
    voc_labels, sbd_labels = _fake_voc_download(str(tmp_path / 'dl'))
    out = str(tmp_path / 'voc12')
    train = ['2007_000001', '2007_000002', '2008_000001', '2008_000002', '2008_000003']
    val = ['2007_000003', '2007_000004']
    split = os.path.join(out, 'split')
    write_split_list(os.path.join(split, 'train_list.npy'), [('train', s) for s in train],
                     '/home/x/SBD/dataset/annotations')
    write_split_list(os.path.join(split, 'test_list.npy'), [('val', s) for s in val],
                     '/home/x/SBD/dataset/annotations')
    # --voc may name VOCdevkit's parent; --sbd may name benchmark_RELEASE
    code = prepare_voc12.main(['--voc', str(tmp_path / 'dl'), '--sbd', str(tmp_path / 'dl' / 'benchmark_RELEASE'),
                               '--out', out])
    report = capsys.readouterr().out
    assert code == 0, report
    assert 'wrote 5 train and 2 val images' in report and '0 not produced' in report
    assert sorted(f[:-4] for f in os.listdir(os.path.join(out, 'images', 'train'))) == train
    assert sorted(f[:-4] for f in os.listdir(os.path.join(out, 'annotations', 'val'))) == val

    def read(subdir, stem):
        return np.array(Image.open(os.path.join(out, 'annotations', subdir, stem + '.png')))

    # VOC annotates 2007_000001 itself: its mask (with the 255 border) wins over SBD's
    np.testing.assert_array_equal(read('train', '2007_000001'), voc_labels['2007_000001'])
    np.testing.assert_array_equal(read('train', '2008_000002'), sbd_labels['2008_000002'])
    np.testing.assert_array_equal(read('val', '2007_000003'), voc_labels['2007_000003'])
    assert Image.open(os.path.join(out, 'annotations', 'train', '2008_000001.png')).mode == 'P'
    # the SBD-only image came from SBD's img/ folder (value 30, not 90)
    assert abs(cv2.imread(os.path.join(out, 'images', 'train', '2008_000003.jpg')).mean() - 30) < 2
    # the produced root passes the list check and feeds the loader (VOC classes from the shipped split files)
    assert verify_split_list(os.path.join(split, 'train_list.npy'), out) == []
    voc = load_class_splits(os.path.join(REPO, 'dataset'), 'voc12')
    ds = ZeroShotSegmentation(out, load_split_list(str(tmp_path), 'voc12', 'train'), voc, train=True,
                              base_size=16, crop_size=16, scale_range=(1.0, 1.0), flip=False)
    _, label = ds[0]                                      # 2007_000001: raw 1 top half, void row 0, bg bottom
    assert (label[1:6] == 0).all() and (label[0] == 255).all() and (label[6:] == 255).all()
    _, label = ds[3]                                      # 2008_000002 from SBD: raw 11 (dining table) -> 10
    assert (label[:, 4:] == 10).all() and (label[:, :4] == 255).all()

    # a shipped entry that was not produced is reported and fails the run
    write_split_list(os.path.join(split, 'train_list.npy'), [('train', s) for s in train + ['2011_999999']],
                     '/home/x/SBD/dataset/annotations')
    assert prepare_voc12.main(['--voc', str(tmp_path / 'dl'), '--sbd', str(tmp_path / 'dl'), '--out', out]) == 1
    assert '1 not produced: train/2011_999999' in capsys.readouterr().out


def test_prepare_voc12_missing_download_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--voc: none of .* contains \['JPEGImages'"):
        prepare_voc12.main(['--voc', str(tmp_path), '--sbd', str(tmp_path), '--out', str(tmp_path / 'o')])


def test_voc_palette_first_colours():
    palette = prepare_voc12.voc_palette()
    assert len(palette) == 768
    assert palette[:12] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0]
    assert palette[15 * 3:15 * 3 + 3] == [192, 128, 128]  # person


# ---------------------------------------------------------------- prepare_cocostuff


def _fake_coco_download(root):
    values = {'train2017': {'000000000009': (0, 181), '000000000025': (93, 255)},
              'val2017': {'000000000139': (20, 5), '000000000285': (255, 168)}}
    for subdir, items in values.items():
        for stem, (a, b) in items.items():
            label = np.full((10, 14), a, np.uint8)
            label[5:] = b
            _png(os.path.join(root, 'stuffthingmaps_trainval2017', subdir, stem + '.png'), label)
            _jpg(os.path.join(root, 'images', subdir, stem + '.jpg'), 10, 14)
    _png(os.path.join(root, 'stuffthingmaps_trainval2017', 'train2017', '000000000030.png'), np.zeros((10, 14)))
    return values


def test_prepare_cocostuff_from_fake_download(tmp_path, capsys):
    dl = str(tmp_path / 'coco')
    values = _fake_coco_download(dl)
    out = str(tmp_path / 'cocostuff')
    write_split_list(os.path.join(out, 'split', 'test_list.npy'), [('val2017', s) for s in values['val2017']],
                     './deeplab-pytorch/dataset/annotations')
    assert prepare_cocostuff.main(['--coco', dl, '--out', out, '--check-values']) == 0
    captured = capsys.readouterr()
    assert 'train2017: placed 2' in captured.out and 'val2017: placed 2' in captured.out
    assert '1 train2017 annotation(s) have no image' in captured.err and '000000000030' in captured.err
    assert 'test_list.npy: 0 missing file(s)' in captured.out
    train_list = np.load(os.path.join(out, 'split', 'train_list.npy'))
    assert [e.split('/')[-2:] for e in train_list.tolist()] == [['train2017', '000000000009.png'],
                                                                 ['train2017', '000000000025.png']]
    ann = os.path.join(out, 'annotations', 'val2017', '000000000139.png')
    assert os.path.islink(ann)  # symlinked by default
    assert np.unique(np.array(Image.open(ann))).tolist() == [5, 20]

    # an existing list is kept unless --overwrite-list
    assert prepare_cocostuff.main(['--coco', dl, '--out', out, '--mode', 'copy']) == 0
    assert 'left unchanged' in capsys.readouterr().out
    assert not os.path.islink(ann)


def test_prepare_cocostuff_rejects_stuff_only_maps(tmp_path):
    dl = str(tmp_path / 'coco')
    _fake_coco_download(dl)
    _png(os.path.join(dl, 'stuffthingmaps_trainval2017', 'val2017', '000000000139.png'), np.full((10, 14), 183))
    with pytest.raises(ValueError, match=r"000000000139.png holds values \[183\]"):
        prepare_cocostuff.main(['--coco', dl, '--out', str(tmp_path / 'o'), '--check-values'])


# ---------------------------------------------------------------- build_word_vectors


@pytest.fixture(scope='module')
def tiny_kv(tmp_path_factory):
    from gensim.models import KeyedVectors
    folder = tmp_path_factory.mktemp('kv')
    kv = KeyedVectors(vector_size=4)
    words = ['background', 'potted', 'plant', 'sky', 'wall']
    vecs = np.array([[1, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0], [3, 4, 0, 0], [0, 0, 0, 5]], np.float32)
    kv.add_vectors(words, vecs)
    paths = {'kv': str(folder / 'tiny.kv'), 'bin': str(folder / 'tiny.bin'), 'txt': str(folder / 'tiny.txt')}
    kv.save(paths['kv'])
    kv.save_word2vec_format(paths['bin'], binary=True)
    kv.save_word2vec_format(paths['txt'], binary=False)
    return paths


def _labels(tmp_path, names):
    path = str(tmp_path / 'labels_refined.txt')
    with open(path, 'w') as f:
        f.write('\n'.join(f"{i}\t{n}" for i, n in enumerate(names)))
    return path


@pytest.mark.parametrize('fmt', ['kv', 'bin', 'txt'])
def test_build_word_vectors_tool(tmp_path, tiny_kv, fmt, capsys):
    labels = _labels(tmp_path, ['background', 'potted_plant', 'sky', 'Wall-concrete'])
    out = str(tmp_path / 'word_vectors' / 'word2vec.pkl')
    assert build_word_vectors.main(['--labels', labels, '--model', tiny_kv[fmt], '--out', out]) == 0
    with open(out, 'rb') as f:
        table = pickle.load(f)
    assert table.shape == (4, 4) and table.dtype == np.float64
    h = 2 ** -0.5
    np.testing.assert_allclose(table, [[1, 0, 0, 0], [0, h, h, 0], [0.6, 0.8, 0, 0], [0, 0, 0, 1]], atol=1e-6)
    assert "class 3 'Wall-concrete': unknown word(s) ['concrete']" in capsys.readouterr().err


def test_build_word_vectors_missing_names_and_no_normalise(tmp_path, tiny_kv, capsys):
    labels = _labels(tmp_path, ['background', 'cloud', 'sky'])
    out = str(tmp_path / 'w.pkl')
    assert build_word_vectors.main(['--labels', labels, '--model', tiny_kv['kv'], '--out', out]) == 1
    assert "class name 'cloud': none of its words" in capsys.readouterr().err
    assert not os.path.exists(out)
    assert build_word_vectors.main(['--labels', labels, '--model', tiny_kv['kv'], '--out', out,
                                    '--allow-missing', '--no-normalise']) == 0
    assert "class 1 'cloud': unknown word(s) ['cloud']; no word known: zero row" in capsys.readouterr().err
    with open(out, 'rb') as f:
        table = pickle.load(f)
    np.testing.assert_allclose(table, [[1, 0, 0, 0], [0, 0, 0, 0], [3, 4, 0, 0]])
