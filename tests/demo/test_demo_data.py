"""The synthetic demo benchmark: determinism, the real on-disk layout, class coverage, predictable appearance."""
import json

import numpy as np
import pytest
from PIL import Image

from demo import data as demo_data
from demo import make_data as make_demo_data
from libs.datasets import read_class_names

N_TRAIN, N_TEST, SIZE = 24, 20, 64


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp('a') / 'demo'
    summary = demo_data.generate_demo(out, seed=0, n_train=N_TRAIN, n_test=N_TEST, size=SIZE)
    return out, summary


@pytest.fixture(scope='module')
def embeddings():
    voc = demo_data.find_voc_dir()
    return demo_data.load_fastnvec(voc)


def test_same_seed_gives_identical_bytes_and_other_seed_differs(demo, tmp_path):
    out, _ = demo
    again = tmp_path / 'same' / 'demo'
    demo_data.generate_demo(again, seed=0, n_train=N_TRAIN, n_test=N_TEST, size=SIZE)
    first, second = _files(out), _files(again)
    assert first.keys() == second.keys()
    assert all(first[k] == second[k] for k in first), [k for k in first if first[k] != second[k]][:5]
    other = tmp_path / 'other' / 'demo'
    demo_data.generate_demo(other, seed=1, n_train=N_TRAIN, n_test=N_TEST, size=SIZE)
    third = _files(other)
    images = [k for k in first if k.startswith('images/')]
    assert sum(first[k] != third[k] for k in images) == len(images)
    for k in ('word_vectors/fasttext.pkl', 'split/seen_cls.npy'):
        assert first[k] == third[k]


def test_layout_dtypes_and_lists_resolve(demo):
    out, _ = demo
    seen = np.load(out / 'split' / 'seen_cls.npy', allow_pickle=False)
    novel = np.load(out / 'split' / 'novel_cls.npy', allow_pickle=False)
    assert seen.dtype == np.int64 and seen.tolist() == list(range(1, 16))
    assert novel.dtype == np.int64 and novel.tolist() == list(range(16, 21))
    stems = {}
    for name, sub, count in (('train_list', 'train', N_TRAIN), ('test_list', 'val', N_TEST)):
        entries = np.load(out / 'split' / f'{name}.npy', allow_pickle=False)
        assert entries.dtype.kind == 'U' and entries.shape == (count,)
        assert len(set(entries.tolist())) == count
        stems[name] = set()
        for entry in entries:
            assert entry.startswith('dataset/demo/annotations/') and entry.endswith('.png')
            folder, fname = entry.split('/')[-2:]
            assert folder == sub
            stem = fname[:-4]
            stems[name].add(stem)
            img = Image.open(out / 'images' / folder / f'{stem}.jpg')
            ann = Image.open(out / 'annotations' / folder / f'{stem}.png')
            assert img.format == 'JPEG' and img.mode == 'RGB'
            assert ann.format == 'PNG' and ann.mode == 'L'
            assert img.size == ann.size == (SIZE, SIZE)
            values = set(np.unique(np.array(ann)).tolist())
            assert values <= set(range(21)) | {255}, values
    assert not stems['train_list'] & stems['test_list']
    for f in ('labels.txt', 'labels_refined.txt', 'README.md', 'classes.json'):
        assert (out / f).is_file()


def test_vocab_files_are_vocs_byte_for_byte(demo):
    out, _ = demo
    voc = demo_data.find_voc_dir()
    for f in demo_data.VOC_FILES:
        assert (out / f).read_bytes() == (voc / f).read_bytes(), f


def test_every_class_in_train_and_test(demo):
    out, summary = demo
    for sub in ('train', 'val'):
        hist = np.zeros(256, np.int64)
        for p in (out / 'annotations' / sub).glob('*.png'):
            hist += np.bincount(np.array(Image.open(p)).ravel(), minlength=256)
        assert all(hist[c] > 0 for c in range(1, 21)), (sub, hist[:21])
        assert hist[0] > 0 and hist[255] > 0
        names = read_class_names(out / 'labels_refined.txt')
        assert [summary['pixel_counts'][sub][names[c]] for c in range(1, 21)] == hist[1:21].tolist()


def test_unseen_appearance_is_predicted_from_seen_classes(embeddings):
    table = demo_data.appearance_table(embeddings, appearance_seed=0)
    seen, unseen = list(demo_data.SEEN_IDS), list(demo_data.UNSEEN_IDS)
    # A linear map fitted on the 15 seen classes only (minimum-norm least squares on the full embeddings)...
    fit = np.linalg.lstsq(embeddings[seen], table['code'][seen], rcond=None)[0]
    predicted = embeddings[unseen] @ fit
    # ...predicts the unseen classes' appearance codes exactly: they depend on the seen-span part only.
    assert np.abs(predicted - table['code'][unseen]).max() < 1e-8
    unit = 1 / (1 + np.exp(-table['gain'] * (predicted - table['offset'])))
    assert np.abs(unit - table['unit'][unseen]).max() < 1e-8
    # The part of an unseen embedding outside the seen span changes nothing.
    basis = np.linalg.svd(embeddings[seen], full_matrices=False)[2]
    projected = embeddings[unseen] @ basis.T @ basis
    assert np.abs(projected @ table['linear_map'] - table['code'][unseen]).max() < 1e-8
    assert np.abs(embeddings[unseen] - projected).max() > 0.1


def test_classes_are_distinct_and_params_in_range(embeddings):
    table = demo_data.appearance_table(embeddings, appearance_seed=0)
    ids = list(demo_data.CLASS_IDS)
    unit = table['unit'][ids]
    dist = np.sqrt(((unit[:, None] - unit[None]) ** 2).sum(-1)) + np.eye(len(ids)) * 10
    assert dist.min() == pytest.approx(table['min_distance'])
    assert table['min_distance'] > 0.4
    for k, (name, lo, hi) in enumerate(demo_data.APPEARANCE_PARAMS):
        assert np.all(table['params'][ids, k] > lo) and np.all(table['params'][ids, k] < hi), name
    again = demo_data.appearance_table(embeddings, appearance_seed=0)
    assert np.array_equal(again['params'], table['params'])


def test_classes_json_and_readme(demo):
    out, summary = demo
    doc = json.loads((out / 'classes.json').read_text())
    assert doc['generation'] == demo_data.generation_record(0, N_TRAIN, N_TEST, SIZE, 0)
    assert [c['id'] for c in doc['classes']] == list(range(1, 21))
    assert {c['name'] for c in doc['classes'] if c['split'] == 'unseen'} == {'potted_plant', 'sheep', 'sofa',
                                                                             'train', 'tv'}
    assert all(c['contexts'] for c in doc['classes'])
    readme = (out / 'README.md').read_text()
    assert f'--seed 0 --n_train {N_TRAIN} --n_test {N_TEST}' in readme and 'sheep' in readme


def test_is_complete_and_cli_skip(demo, tmp_path, capsys):
    out = tmp_path / 'demo'
    args = ['--out', str(out), '--n_train', '20', '--n_test', '20', '--quiet']
    assert make_demo_data.main(args) == 0
    assert 'test pixels per class' in capsys.readouterr().out
    assert demo_data.is_complete(out, n_train=20, n_test=20)
    assert not demo_data.is_complete(out, n_train=20, n_test=20, seed=3)
    assert make_demo_data.main(args) == 0
    assert 'skipping' in capsys.readouterr().out
    with pytest.raises(SystemExit, match='--force'):
        make_demo_data.main(args[:-1] + ['--seed', '2'])
    next((out / 'images' / 'val').glob('*.jpg')).unlink()
    assert not demo_data.is_complete(out, n_train=20, n_test=20)
    assert make_demo_data.main(args) == 0
    assert demo_data.is_complete(out, n_train=20, n_test=20)


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match='n_test'):
        demo_data.generate_demo(tmp_path / 'demo', n_train=20, n_test=5)
    with pytest.raises(FileNotFoundError, match='labels_refined'):
        demo_data.find_voc_dir(tmp_path)
