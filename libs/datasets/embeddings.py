"""Class word embeddings (docs/method.md §6.5): loading, fastText ⊕ word2vec, normalisation, lookup tables.

`<datadir>/<name>/word_vectors/{word2vec,fasttext}.pkl` each hold a pickled numpy array (K, 300) whose row r is
the vector of raw label r (K = rows of labels_refined.txt). The generator is conditioned on these vectors:
seen classes through `em_vis` (indexed by train ids, 255 hits a zero row) and all classes through `em_all`
(indexed by test ids).
"""
import os
import pickle
from typing import Optional, Tuple

import numpy as np
import torch

from .splits import MAP_SIZE, ClassSplits, dataset_dir, read_class_names

# The `embedding` options and their dimension for the shipped word-vector files (fastnvec = fastText 300 +
# word2vec 300).
EMBEDDING_DIMS = {'word2vec': 300, 'fasttext': 300, 'fastnvec': 600}
EMBEDDINGS = tuple(EMBEDDING_DIMS)
# The word-vector files each option concatenates, in order.
EMBEDDING_PARTS = {'word2vec': ('word2vec',), 'fasttext': ('fasttext',), 'fastnvec': ('fasttext', 'word2vec')}
# F.normalize's epsilon: a zero row stays zero instead of becoming NaN.
NORM_EPS = 1e-12

# What a pickled numpy array refers to (numpy 1 and 2 module names; `_codecs.encode` carries bytes in protocol-2
# and Python-2 pickles). Anything else in a word-vector file is refused: unpickling it could run arbitrary code.
_ARRAY_GLOBALS = frozenset({
    ('numpy', 'ndarray'), ('numpy', 'dtype'),
    ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
    ('numpy.core.numeric', '_frombuffer'), ('numpy._core.numeric', '_frombuffer'),
    ('_codecs', 'encode'),
})


class _Refused(pickle.UnpicklingError):
    """The pickle names a global that a numpy array does not need."""


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, numbers, strings, lists and dicts only."""

    def find_class(self, module, name):
        if (module, name) in _ARRAY_GLOBALS or (module == 'numpy.dtypes' and name.endswith('DType')):
            return super().find_class(module, name)
        raise _Refused(f"{module}.{name}")


def load_vector_file(path: str) -> np.ndarray:
    """One pickled word-vector table (K, D), row r = class r, with a clear error for a missing or malformed file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"word-vector file {path} does not exist; expected a pickled numpy array (K, D), "
                                f"row r = vector of raw class r (make one with tools/build_word_vectors.py)")
    with open(path, 'rb') as f:
        # The shipped files were pickled by Python 3 with numpy; latin-1 also reads Python-2 numpy pickles.
        try:
            vectors = _ArrayUnpickler(f, encoding='latin1').load()
        except _Refused as exc:
            raise ValueError(f"{path}: refused: the pickle refers to {exc}, which a word-vector table does not "
                             f"need, and unpickling it could run arbitrary code. Expected a pickled numpy array "
                             f"(K, D) (tools/build_word_vectors.py writes one)") from None
        except Exception as exc:
            raise ValueError(f"{path}: not a readable pickle of a numpy array (K, D): {exc}") from exc
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.number):
        raise ValueError(f"{path}: expected a 2-D numeric array (K, D), got dtype {vectors.dtype} "
                         f"shape {vectors.shape}")
    return vectors


def l2_normalise_rows(matrix: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Divide each row of a (K, E) array by max(‖row‖₂, 1e-12) in `dtype`, as torch's F.normalize(dim=1)."""
    matrix = matrix.astype(dtype)
    norms = np.sqrt(np.sum(matrix ** 2, axis=1, keepdims=True, dtype=dtype))
    return (matrix / np.maximum(norms, dtype(NORM_EPS))).astype(dtype)


def load_word_embeddings(datadir: str, name: str, embedding: str = 'fastnvec',
                         without_normal: bool = False, dtype=np.float32) -> np.ndarray:
    """Class embeddings of dataset `name` by raw label, (K, E) of `dtype` (float32: the model's; the demo
    generator asks for float64).

    Args:
        embedding: config key `embedding`: `word2vec` or `fasttext` (E = 300 for the shipped files) or
            `fastnvec` = [fastText ‖ word2vec] concatenated along the feature axis, fastText first (E = 600).
        without_normal: config key `emb_without_normal`. When false (every shipped config) each E-d row is
            L2-normalised as a whole; for fastnvec that is *after* concatenation, so the two halves keep their
            relative size (Context's unnormalised files give the fastText half 0.80–0.86 of the norm).
            docs/method.md §6.5 states the rule for every option; a single 300-d embedding is normalised row-wise the
            same way.
    """
    if embedding not in EMBEDDINGS:
        raise ValueError(f"config key embedding must be one of {list(EMBEDDINGS)}, got {embedding!r}")
    base = dataset_dir(datadir, name)
    labels_path = os.path.join(base, 'labels_refined.txt')
    num_raw = len(read_class_names(labels_path))
    arrays = []
    for part in EMBEDDING_PARTS[embedding]:
        path = os.path.join(base, 'word_vectors', part + '.pkl')
        vectors = load_vector_file(path)
        if vectors.shape[0] != num_raw:
            raise ValueError(f"{path} has {vectors.shape[0]} rows but {labels_path} names {num_raw} raw classes; "
                             f"row r must be the vector of raw class r")
        arrays.append(vectors)
    return combine_word_vectors(arrays, without_normal, dtype)


def combine_word_vectors(parts, without_normal: bool = False, dtype=np.float32) -> np.ndarray:
    """The class embedding (K, E) from its word-vector tables (K, d_i) in `EMBEDDING_PARTS` order: concatenated
    along the feature axis, then each row L2-normalised as a whole unless `without_normal` (docs/method.md §6.5)."""
    # Normalised in `dtype`; float32 against float64 maths differs only by rounding (~1e-7).
    matrix = np.concatenate([np.asarray(part).astype(dtype) for part in parts], axis=1)
    if not without_normal:
        matrix = l2_normalise_rows(matrix, dtype)
    return np.ascontiguousarray(matrix, dtype=dtype)


def build_embedding_tables(embeddings: np.ndarray, splits: ClassSplits,
                           expected_dim: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The two lookup tables the model conditions its generator on.

    Args:
        embeddings: (K, E) rows by raw label, from `load_word_embeddings`.
        splits: the class splits; K must equal len(splits.raw_names).
        expected_dim: E the model was configured for, i.e. gen.in_dim_mlp − back.n_classes (600 in every
            shipped config); a mismatch is reported here instead of as a shape error deep in the generator.
    Returns:
        em_vis: float32 (256, E); row i = embedding of seen class i (train id), rows S..255 zero so that
            ignored pixels (train id 255) and pseudo-labelled unseen pixels get the zero vector.
        em_all: float32 (S+U, E); rows in test-id order (seen then unseen, file order).
    """
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D (K, E) array, got shape {embeddings.shape}")
    num_raw, dim = embeddings.shape
    if num_raw != len(splits.raw_names):
        raise ValueError(f"the word-embedding matrix has {num_raw} rows but labels_refined.txt of dataset "
                         f"{splits.name!r} names {len(splits.raw_names)} raw classes")
    if expected_dim is not None and dim != int(expected_dim):
        raise ValueError(f"the word embedding is {dim}-d but the model expects {expected_dim}-d "
                         f"(gen.in_dim_mlp - back.n_classes); with a {dim}-d embedding set gen.in_dim_mlp to "
                         f"back.n_classes + {dim}")
    if splits.num_seen > MAP_SIZE:
        raise ValueError(f"{splits.num_seen} seen classes do not fit into the {MAP_SIZE}-row em_vis table")
    table = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
    em_vis = torch.zeros(MAP_SIZE, dim, dtype=torch.float32)
    em_vis[:splits.num_seen] = table[torch.from_numpy(np.array(splits.seen))]
    em_all = table[torch.from_numpy(np.array(splits.test_ids_to_raw))].clone()
    return em_vis, em_all
