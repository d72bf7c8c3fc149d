"""Word embeddings of the shipped datasets (docs/method.md §6.5) and the lookup tables built from them."""
import os
import pickle

import numpy as np
import pytest
import torch

from libs.datasets import build_embedding_tables, load_class_splits, load_word_embeddings
from tests.datagen import write_dataset
from tests.e2e_config import ROOT
from tools.build_word_vectors import build_word_vectors

REPO = ROOT
DATADIR = os.path.join(REPO, 'dataset')


def _pkl(name, which):
    with open(os.path.join(DATADIR, name, 'word_vectors', which + '.pkl'), 'rb') as f:
        return pickle.load(f)


@pytest.mark.parametrize('name,rows', [('voc12', 21), ('context', 34), ('cocostuff', 182)])
def test_fastnvec_shape_unit_rows_and_fasttext_first(name, rows):
    emb = load_word_embeddings(DATADIR, name)
    assert emb.shape == (rows, 600) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    fast, w2v = _pkl(name, 'fasttext'), _pkl(name, 'word2vec')
    joint = np.linalg.norm(np.concatenate([fast, w2v], axis=1), axis=1, keepdims=True)
    np.testing.assert_allclose(emb[:, :300], fast / joint, atol=1e-6)
    np.testing.assert_allclose(emb[:, 300:], w2v / joint, atol=1e-6)


@pytest.mark.parametrize('name', ['voc12', 'cocostuff'])
def test_unit_norm_files_give_halves_of_norm_one_over_sqrt2(name):
    emb = load_word_embeddings(DATADIR, name)
    np.testing.assert_allclose(np.linalg.norm(emb[:, :300], axis=1), 2 ** -0.5, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb[:, 300:], axis=1), 2 ** -0.5, atol=1e-5)


def test_context_halves_are_unequal_after_joint_normalisation():
    emb = load_word_embeddings(DATADIR, 'context')
    fast_share = np.linalg.norm(emb[:, :300], axis=1)
    # "0.80-0.86 of the norm" (docs/method.md §6.5, two decimals); the extremes are raw 12 (dog) and raw 1 (aeroplane)
    assert np.round(fast_share, 2).min() == pytest.approx(0.80) and np.round(fast_share, 2).max() == \
        pytest.approx(0.86)
    assert fast_share.argmin() == 12 and fast_share[12] == pytest.approx(0.7993, abs=1e-4)
    assert fast_share.argmax() == 1 and fast_share[1] == pytest.approx(0.8558, abs=1e-4)
    np.testing.assert_allclose(np.linalg.norm(emb[:, 300:], axis=1) ** 2 + fast_share ** 2, 1.0, atol=1e-5)


def test_single_embeddings_are_300d_and_normalised_unless_disabled():
    w2v = load_word_embeddings(DATADIR, 'context', embedding='word2vec')
    assert w2v.shape == (34, 300)
    np.testing.assert_allclose(np.linalg.norm(w2v, axis=1), 1.0, atol=1e-5)
    raw = load_word_embeddings(DATADIR, 'context', embedding='fasttext', without_normal=True)
    np.testing.assert_allclose(raw, _pkl('context', 'fasttext').astype(np.float32))
    assert np.linalg.norm(raw[1]) == pytest.approx(5.0663, abs=1e-3)
    raw_joint = load_word_embeddings(DATADIR, 'context', without_normal=True)
    np.testing.assert_allclose(raw_joint[:, 300:], _pkl('context', 'word2vec'))
    with pytest.raises(ValueError, match="config key embedding must be one of"):
        load_word_embeddings(DATADIR, 'context', embedding='glove')


def test_tables_for_voc():
    splits = load_class_splits(DATADIR, 'voc12')
    emb = load_word_embeddings(DATADIR, 'voc12')
    em_vis, em_all = build_embedding_tables(emb, splits, expected_dim=600)
    assert em_vis.shape == (256, 600) and em_vis.dtype == torch.float32
    assert em_all.shape == (20, 600) and em_all.dtype == torch.float32
    np.testing.assert_array_equal(em_vis[:15].numpy(), emb[1:16])
    assert (em_vis[15:] == 0).all()
    np.testing.assert_array_equal(em_all.numpy(), emb[1:21])


def test_tables_for_context_follow_unsorted_unseen_order():
    splits = load_class_splits(DATADIR, 'context')
    emb = load_word_embeddings(DATADIR, 'context')
    em_vis, em_all = build_embedding_tables(emb, splits)
    assert em_all.shape == (33, 600)
    np.testing.assert_array_equal(em_all[29:].numpy(), emb[[10, 14, 18, 8]])
    np.testing.assert_array_equal(em_vis[7].numpy(), emb[9])
    assert (em_vis[29:] == 0).all() and em_vis[28].abs().sum() > 0
    # the train-id map looks up the zero row for ignored pixels
    assert (em_vis[torch.from_numpy(splits.train_map[[0, 8, 255]])] == 0).all()


def test_tables_for_coco():
    splits = load_class_splits(DATADIR, 'cocostuff')
    emb = load_word_embeddings(DATADIR, 'cocostuff')
    em_vis, em_all = build_embedding_tables(emb, splits)
    assert em_vis.shape == (256, 600) and em_all.shape == (182, 600)
    np.testing.assert_array_equal(em_vis[155].numpy(), emb[3])
    np.testing.assert_array_equal(em_all[167].numpy(), emb[20])
    assert (em_vis[167:] == 0).all()


def test_dimension_and_row_count_errors(tmp_path):
    splits = load_class_splits(DATADIR, 'voc12')
    w2v = load_word_embeddings(DATADIR, 'voc12', embedding='word2vec')
    with pytest.raises(ValueError) as err:
        build_embedding_tables(w2v, splits, expected_dim=600)
    assert 'gen.in_dim_mlp' in str(err.value) and '300-d' in str(err.value) and '600-d' in str(err.value)
    with pytest.raises(ValueError, match="has 20 rows but labels_refined.txt of dataset 'voc12' names 21"):
        build_embedding_tables(w2v[:20], splits)

    toy = write_dataset(str(tmp_path), n_train=1, n_test=1)
    with open(os.path.join(toy.root, 'word_vectors', 'word2vec.pkl'), 'wb') as f:
        pickle.dump(np.zeros((5, 300)), f)
    with pytest.raises(ValueError, match=r"word2vec.pkl has 5 rows but .*labels_refined.txt names 6"):
        load_word_embeddings(toy.datadir, 'toy')
    os.remove(os.path.join(toy.root, 'word_vectors', 'fasttext.pkl'))
    with pytest.raises(FileNotFoundError, match="fasttext.pkl does not exist"):
        load_word_embeddings(toy.datadir, 'toy')


def test_toy_fasttext_scale_is_kept_relative():
    # fastText rows of norm 3 and word2vec rows of norm 1 → fastText half 3/sqrt(10) of the joint norm
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(tmp, n_train=1, n_test=1, embedding_dim=8, fasttext_scale=3.0)
        emb = load_word_embeddings(tmp, 'toy')
    assert emb.shape == (6, 16)
    np.testing.assert_allclose(np.linalg.norm(emb[:, :8], axis=1), 3 / np.sqrt(10), atol=1e-6)


def test_build_word_vectors_averages_words_and_normalises():
    vecs = {'potted': np.array([1.0, 0, 0]), 'plant': np.array([0, 1.0, 0]), 'cat': np.array([0, 0, 2.0]),
            'wall': np.array([2.0, 0, 0])}
    matrix, missing = build_word_vectors(['cat', 'potted_plant', 'Wall-concrete'], vecs)
    np.testing.assert_allclose(matrix, [[0, 0, 1], [2 ** -0.5, 2 ** -0.5, 0], [1, 0, 0]])
    assert missing == [(2, 'Wall-concrete', ['concrete'])]
    raw, _ = build_word_vectors(['potted plant'], vecs, normalise=False)
    np.testing.assert_allclose(raw, [[0.5, 0.5, 0]])
    with pytest.raises(ValueError, match="class name 'sky': none of its words"):
        build_word_vectors(['cat', 'sky'], vecs)
    zero, missing = build_word_vectors(['cat', 'sky'], vecs, allow_missing=True)
    assert (zero[1] == 0).all() and missing == [(1, 'sky', ['sky'])]


class _CreatesFile:
    """Unpickled, this creates a file: what a word-vector .pkl from an untrusted source could do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, 'w'))


def test_word_vector_files_are_unpickled_safely(tmp_path):
    from libs.datasets.embeddings import load_vector_file
    rows = np.arange(12.0).reshape(4, 3)
    for protocol in (2, 3, 4, 5):           # every protocol numpy arrays are pickled with, and plain lists
        path = tmp_path / f'p{protocol}.pkl'
        path.write_bytes(pickle.dumps(rows.astype(np.float32), protocol=protocol))
        np.testing.assert_array_equal(load_vector_file(str(path)), rows)
    (tmp_path / 'list.pkl').write_bytes(pickle.dumps(rows.tolist()))
    np.testing.assert_array_equal(load_vector_file(str(tmp_path / 'list.pkl')), rows)
    marker = tmp_path / 'code_ran'
    evil = tmp_path / 'word2vec.pkl'
    evil.write_bytes(pickle.dumps([rows, _CreatesFile(str(marker))]))
    with pytest.raises(ValueError, match=r"word2vec.pkl: refused: the pickle refers to io.open, .*arbitrary code"):
        load_vector_file(str(evil))
    assert not marker.exists()
    (tmp_path / 'text.pkl').write_text('not a pickle')
    with pytest.raises(ValueError, match='text.pkl: not a readable pickle of a numpy array'):
        load_vector_file(str(tmp_path / 'text.pkl'))


@pytest.mark.parametrize('name', ['voc12', 'context', 'cocostuff'])
def test_the_shipped_word_vectors_load_safely_and_unchanged(name):
    from libs.datasets.embeddings import load_vector_file
    for which in ('fasttext', 'word2vec'):
        path = os.path.join(DATADIR, name, 'word_vectors', which + '.pkl')
        np.testing.assert_array_equal(load_vector_file(path), _pkl(name, which))
