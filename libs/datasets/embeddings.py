"""Class word embeddings (method-spec §7): loading, fastText ⊕ word2vec, normalisation, lookup tables.

`<datadir>/<name>/word_vectors/{word2vec,fasttext}.pkl` each hold a pickled numpy array (K, 300) whose row r is
the vector of raw label r (K = rows of labels_refined.txt). The generator is conditioned on these vectors:
seen classes through `em_vis` (indexed by train ids, 255 hits a zero row) and all classes through `em_all`
(indexed by test ids).
"""
import os
import pickle
import re
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .splits import MAP_SIZE, ClassSplits, dataset_dir, read_class_names

EMBEDDINGS = ('word2vec', 'fasttext', 'fastnvec')
# F.normalize's epsilon: a zero row stays zero instead of becoming NaN.
NORM_EPS = 1e-12


def _load_vectors(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"word-vector file {path} does not exist; expected a pickled numpy array (K, D), "
                                f"row r = vector of raw class r (make one with tools/build_word_vectors.py)")
    with open(path, 'rb') as f:
        # The shipped files were pickled by Python 3 with numpy; latin-1 also reads Python-2 numpy pickles.
        vectors = pickle.load(f, encoding='latin1')
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.number):
        raise ValueError(f"{path}: expected a 2-D numeric array (K, D), got dtype {vectors.dtype} "
                         f"shape {vectors.shape}")
    return vectors


def l2_normalise_rows(matrix: np.ndarray) -> np.ndarray:
    """Divide each row of a (K, E) float32 array by max(‖row‖₂, 1e-12), as torch's F.normalize(dim=1)."""
    norms = np.sqrt(np.sum(matrix.astype(np.float32) ** 2, axis=1, keepdims=True, dtype=np.float32))
    return (matrix / np.maximum(norms, np.float32(NORM_EPS))).astype(np.float32)


def load_word_embeddings(datadir: str, name: str, embedding: str = 'fastnvec',
                         without_normal: bool = False) -> np.ndarray:
    """Class embeddings of dataset `name` by raw label, float32 (K, E).

    Args:
        embedding: config key `embedding`: `word2vec` or `fasttext` (E = 300 for the shipped files) or
            `fastnvec` = [fastText ‖ word2vec] concatenated along the feature axis, fastText first (E = 600).
        without_normal: config key `emb_without_normal`. When false (every shipped config) each E-d row is
            L2-normalised as a whole; for fastnvec that is *after* concatenation, so the two halves keep their
            relative size (Context's unnormalised files give the fastText half 0.80–0.86 of the norm).
            §7 states the rule for every option; a single 300-d embedding is normalised row-wise the same way.
    """
    if embedding not in EMBEDDINGS:
        raise ValueError(f"config key embedding must be one of {list(EMBEDDINGS)}, got {embedding!r}")
    base = dataset_dir(datadir, name)
    labels_path = os.path.join(base, 'labels_refined.txt')
    num_raw = len(read_class_names(labels_path))
    parts = ['fasttext', 'word2vec'] if embedding == 'fastnvec' else [embedding]
    arrays = []
    for part in parts:
        path = os.path.join(base, 'word_vectors', part + '.pkl')
        vectors = _load_vectors(path)
        if vectors.shape[0] != num_raw:
            raise ValueError(f"{path} has {vectors.shape[0]} rows but {labels_path} names {num_raw} raw classes; "
                             f"row r must be the vector of raw class r")
        arrays.append(vectors.astype(np.float32))
    # Normalised in float32 (the model's dtype); against float64 maths this differs only by rounding (~1e-7).
    matrix = np.concatenate(arrays, axis=1)
    if not without_normal:
        matrix = l2_normalise_rows(matrix)
    return np.ascontiguousarray(matrix, dtype=np.float32)


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


_WORD_SPLIT = re.compile(r'[_\-\s]+')


def class_name_words(name: str) -> list:
    """Words of a class name: split on `_`, `-` and whitespace (`potted_plant`, `wall-concrete`, `traffic light`)."""
    return [w for w in _WORD_SPLIT.split(name) if w]


def build_word_vectors(names: Sequence[str], vectors: Mapping, normalise: bool = True,
                       allow_missing: bool = False) -> Tuple[np.ndarray, list]:
    """Word vector of every class name, float64 (K, D); row r = class r.

    `vectors` is anything with `in` and `[word]` (a gensim KeyedVectors, or a dict of arrays). A multi-word
    name is the mean of the vectors of its words that the model knows; each word is looked up as written,
    then lower-cased. With `normalise` each row is scaled to unit L2 norm (as the shipped VOC/COCO files are).
    A name none of whose words is known is an error, or with `allow_missing` a zero row.
    Returns (matrix, missing): `missing` lists (row, name, [unknown words]) for every name with an unknown word.
    """
    if not names:
        raise ValueError("build_word_vectors: the class-name list is empty")
    rows, missing, dim = [], [], None
    for row, name in enumerate(names):
        words = class_name_words(name)
        found, unknown = [], []
        for word in words:
            key = word if word in vectors else (word.lower() if word.lower() in vectors else None)
            if key is None:
                unknown.append(word)
            else:
                found.append(np.asarray(vectors[key], dtype=np.float64))
        if unknown:
            missing.append((row, name, unknown))
        if not found:
            if not allow_missing:
                raise ValueError(f"class name {name!r}: none of its words {words} is in the word-vector model; "
                                 f"rename the class in labels_refined.txt or pass --allow-missing for a zero row")
            rows.append(None)
            continue
        vec = np.mean(found, axis=0)
        if dim is None:
            dim = vec.shape[0]
        rows.append(vec)
    if dim is None:
        raise ValueError("build_word_vectors: no class name has a known word")
    matrix = np.stack([np.zeros(dim) if r is None else r for r in rows]).astype(np.float64)
    if normalise:
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        matrix = matrix / np.maximum(norms, NORM_EPS)
    return matrix, missing
