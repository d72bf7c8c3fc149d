"""Class splits and list parsing on the shipped benchmark files (docs/method.md §6.2) and on toy files."""
import os

import numpy as np
import pytest

from libs.datasets import load_class_splits, load_split_list
from libs.datasets.splits import build_class_splits, parse_list_entry, read_class_names
from tests.datagen import write_dataset
from tests.e2e_config import ROOT

REPO = ROOT
DATADIR = os.path.join(REPO, 'dataset')

COCO_SEEN_EXTRAS = [3, 21, 38, 45, 51, 61, 75, 81, 93, 129, 136, 139]
COCO_UNSEEN = [20, 24, 32, 33, 40, 56, 86, 99, 105, 123, 144, 147, 148, 168, 171]


def test_voc_splits_order_maps_and_names():
    s = load_class_splits(DATADIR, 'voc12', num_unseen=5, out_dim_cls=21)
    assert s.seen.tolist() == list(range(1, 16))
    assert s.unseen.tolist() == [16, 17, 18, 19, 20]
    assert (s.num_seen, s.num_unseen, s.num_classes) == (15, 5, 20)
    assert s.seen.dtype == np.int64 and s.train_map.dtype == np.int64 and s.test_map.shape == (256,)
    # raw 0 (background) and 255 (void) are ignored in both maps; unseen ignored only in training
    assert s.train_map[0] == 255 and s.train_map[255] == 255 and s.test_map[0] == 255
    assert s.train_map[1:16].tolist() == list(range(15))
    assert s.train_map[16:21].tolist() == [255] * 5
    assert s.test_map[1:21].tolist() == list(range(20))
    assert (s.train_map[21:] == 255).all()
    assert s.raw_names[0] == 'background'
    assert s.test_names[:2] == ['aeroplane', 'bicycle']
    assert s.test_names[14] == 'person'
    assert s.test_names[15:] == ['potted_plant', 'sheep', 'sofa', 'train', 'tv']


def test_context_unseen_file_order_not_sorted():
    s = load_class_splits(DATADIR, 'context', num_unseen=4, out_dim_cls=34)
    assert s.unseen.tolist() == [10, 14, 18, 8]
    assert s.seen.tolist() == [1, 2, 3, 4, 5, 6, 7, 9, 11, 12, 13, 15, 16, 17, 19, 20] + list(range(21, 34))
    assert s.num_classes == 33 and len(s.raw_names) == 34
    assert s.test_map[[10, 14, 18, 8]].tolist() == [29, 30, 31, 32]
    assert s.train_map[[10, 14, 18, 8, 0]].tolist() == [255] * 5
    assert s.test_map[9] == 7 and s.test_map[33] == 28
    assert s.test_names[7] == 'chair' and s.test_names[28] == 'ceiling'
    assert s.test_names[29:] == ['cow', 'motorbike', 'sofa', 'cat']


def test_coco_seen_list_with_appended_extras():
    s = load_class_splits(DATADIR, 'cocostuff', num_unseen=15, out_dim_cls=183)
    assert s.num_seen == 167 and s.num_unseen == 15 and len(s.raw_names) == 182
    assert s.seen[:5].tolist() == [0, 1, 2, 4, 5]
    assert s.seen[154] == 181
    assert s.seen[155:].tolist() == COCO_SEEN_EXTRAS
    assert (np.diff(s.seen[:155]) > 0).all()
    assert s.unseen.tolist() == COCO_UNSEEN
    assert s.train_map[3] == 155 and s.train_map[139] == 166 and s.train_map[20] == 255
    assert s.test_map[20] == 167 and s.test_map[171] == 181 and s.test_map[255] == 255
    # COCO-Stuff raw 0 is a class (person), not background
    assert s.train_map[0] == 0 and s.raw_names[0] == 'person'
    assert s.test_names[155] == 'motorcycle' and s.test_names[166] == 'pavement'
    assert s.test_names[167] == 'cow' and s.test_names[-1] == 'wall-concrete'
    assert sorted(s.seen.tolist() + s.unseen.tolist()) == list(range(182))


def test_maps_are_read_only():
    s = load_class_splits(DATADIR, 'voc12')
    with pytest.raises(ValueError):
        s.train_map[0] = 3


@pytest.mark.parametrize('key,value,fragment', [
    ('num_unseen', 4, "num_unseen is 4"),
    ('out_dim_cls', 20, "dis.out_dim_cls is 20"),
])
def test_config_mismatch_names_key_value_and_files(key, value, fragment):
    with pytest.raises(ValueError) as err:
        load_class_splits(DATADIR, 'voc12', **{key: value})
    msg = str(err.value)
    assert fragment in msg
    assert ('lists 5 unseen' in msg) if key == 'num_unseen' else ('= 21' in msg)


def test_shipped_lists_parse_to_subdir_and_stem():
    voc_train = load_split_list(DATADIR, 'voc12', 'train')
    voc_test = load_split_list(DATADIR, 'voc12', 'test')
    assert len(voc_train) == 10582 and len(voc_test) == 1449
    assert voc_train[0] == ('train', '2008_004469')
    assert voc_test[0] == ('val', '2010_005159')
    ctx_test = load_split_list(DATADIR, 'context', 'test')
    assert len(ctx_test) == 5105 and ctx_test[0] == ('val', '2008_006425')
    assert len(load_split_list(DATADIR, 'context', 'train')) == 4998
    coco_test = load_split_list(DATADIR, 'cocostuff', 'test')
    assert len(coco_test) == 5000 and coco_test[0] == ('val2017', '000000002157')
    assert not {t for _, t in voc_train} & {t for _, t in voc_test}


def test_missing_coco_train_list_explains_how_to_make_it():
    with pytest.raises(FileNotFoundError) as err:
        load_split_list(DATADIR, 'cocostuff', 'train')
    msg = str(err.value)
    assert 'does not contain the COCO-Stuff training list' in msg
    assert 'python -m tools.make_split_list' in msg and '--subdir train2017' in msg


def test_parse_list_entry_variants():
    assert parse_list_entry('/home/x/SBD/dataset/annotations/train/2008_004469.png') == ('train', '2008_004469')
    assert parse_list_entry('/users/pascal_context/annotations/val/2008_006425') == ('val', '2008_006425')
    assert parse_list_entry('./deeplab-pytorch/dataset/annotations/val2017/000000002157.png') == \
        ('val2017', '000000002157')
    with pytest.raises(ValueError, match="fewer than two path components"):
        parse_list_entry('2008_004469.png')


def test_toy_files_and_errors(tmp_path):
    toy = write_dataset(str(tmp_path), n_train=2, n_test=1, list_ext='')
    s = load_class_splits(toy.datadir, 'toy', num_unseen=2, out_dim_cls=6)
    assert s.unseen.tolist() == [5, 4]
    assert s.test_map[:6].tolist() == [255, 0, 1, 2, 4, 3]
    assert load_split_list(toy.datadir, 'toy', 'train') == toy.train_entries
    with pytest.raises(ValueError, match="split must be one of"):
        load_split_list(toy.datadir, 'toy', 'novel')

    np.save(os.path.join(toy.root, 'split', 'test_list.npy'), np.array([], dtype='<U10'))
    with pytest.raises(ValueError, match="test_list.npy is empty"):
        load_split_list(toy.datadir, 'toy', 'test')
    os.remove(os.path.join(toy.root, 'split', 'train_list.npy'))
    with pytest.raises(FileNotFoundError, match="train_list.npy does not exist"):
        load_split_list(toy.datadir, 'toy', 'train')
    with pytest.raises(FileNotFoundError, match=r"dataset folder .*nosuch does not exist.*README.md"):
        load_class_splits(toy.datadir, 'nosuch')


def test_bad_class_files_are_named(tmp_path):
    toy = write_dataset(str(tmp_path), n_train=1, n_test=1)
    np.save(os.path.join(toy.root, 'split', 'novel_cls.npy'), np.array([4, 9], dtype=np.int64))
    with pytest.raises(ValueError, match=r"novel_cls.npy: raw class ids \[9\] are outside 0..5"):
        load_class_splits(toy.datadir, 'toy')
    np.save(os.path.join(toy.root, 'split', 'novel_cls.npy'), np.array([3], dtype=np.int64))
    with pytest.raises(ValueError, match=r"raw ids \[3\] are listed as both seen and unseen"):
        load_class_splits(toy.datadir, 'toy')
    labels = os.path.join(toy.root, 'labels_refined.txt')
    with open(labels, 'w') as f:
        f.write('0\tbackground\n2\tcat\n')
    with pytest.raises(ValueError, match="line 2: expected index 1"):
        read_class_names(labels)


def test_build_class_splits_keeps_given_order():
    s = build_class_splits('x', [3, 1], [2], ['bg', 'a', 'b', 'c'])
    assert s.train_map[:4].tolist() == [255, 1, 255, 0]
    assert s.test_map[:4].tolist() == [255, 1, 2, 0]
    assert s.test_names == ['c', 'a', 'b']



def test_readme_sections_named_in_errors_exist():
    from libs.datasets.splits import README_COCO_TRAIN_SECTION, README_LAYOUT_SECTION
    with open(os.path.join(DATADIR, 'README.md')) as f:
        headings = [line[3:].strip() for line in f if line.startswith('## ')]
    for ref in (README_LAYOUT_SECTION, README_COCO_TRAIN_SECTION):
        assert ref.split('section "')[1].rstrip('"') in headings
