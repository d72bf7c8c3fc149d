"""Build a word-vector table (word2vec.pkl / fasttext.pkl) for a class list, so a new dataset can be added.

Row r of the output is the vector of raw class r of `labels_refined.txt` (`index<TAB>name`). A multi-word name
(`potted_plant`, `wall-concrete`, `traffic light`: split on `_`, `-` and spaces) is the mean of the vectors of
its words that the model knows; a word is looked up as written, then lower-cased. Each row is then scaled to
unit L2 norm, like the shipped VOC/COCO files (`--no-normalise` keeps raw magnitudes, like the Context files;
the loader normalises the final embedding anyway unless emb_without_normal is set). A name with no known word
is an error, unless `--allow-missing` (then its row is zero and a warning names it). The output is a pickled
float64 numpy array (K, D), D = the model's dimension (300 for the usual word2vec / fastText models).

    python -m tools.build_word_vectors --labels dataset/mine/labels_refined.txt \
        --model GoogleNews-vectors-negative300.bin --format word2vec-binary --out dataset/mine/word_vectors/word2vec.pkl

Model formats: `kv` (gensim KeyedVectors.save), `word2vec-binary`, `word2vec-text` (e.g. fastText's .vec files).
"""
import argparse
import os
import pickle
import re
import sys
from typing import List, Mapping, Optional, Sequence, Tuple

if not __package__:  # `python tools/<name>.py`: the repository root on the path, as `python -m tools.<name>` has it
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from libs.datasets.embeddings import NORM_EPS
from libs.datasets.splits import read_class_names

FORMATS = ('kv', 'word2vec-binary', 'word2vec-text')


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


def load_model(path: str, fmt: Optional[str]):
    """A gensim KeyedVectors from `path`; the format defaults from the extension (.kv, .bin, else text)."""
    from gensim.models import KeyedVectors
    if not os.path.isfile(path):
        raise FileNotFoundError(f"word-vector model {path} does not exist")
    if fmt is None:
        fmt = 'kv' if path.endswith('.kv') else ('word2vec-binary' if path.endswith('.bin') else 'word2vec-text')
    if fmt == 'kv':
        return KeyedVectors.load(path)
    if fmt in ('word2vec-binary', 'word2vec-text'):
        return KeyedVectors.load_word2vec_format(path, binary=(fmt == 'word2vec-binary'))
    raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--labels', required=True, help='labels_refined.txt (index<TAB>name per raw label)')
    parser.add_argument('--model', required=True, help='gensim KeyedVectors or word2vec-format file')
    parser.add_argument('--format', choices=FORMATS, default=None,
                        help='model format (default: from the extension: .kv, .bin, otherwise text)')
    parser.add_argument('--out', required=True, help='output .pkl path')
    parser.add_argument('--no-normalise', action='store_true', help='keep the raw mean vectors (no unit norm)')
    parser.add_argument('--allow-missing', action='store_true',
                        help='write a zero row (with a warning) for a name with no known word instead of failing')
    args = parser.parse_args(argv)

    names = read_class_names(args.labels)
    model = load_model(args.model, args.format)
    try:
        matrix, missing = build_word_vectors(names, model, normalise=not args.no_normalise,
                                             allow_missing=args.allow_missing)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for row, name, words in missing:
        zero = '; no word known: zero row' if not matrix[row].any() else ''
        print(f"warning: class {row} {name!r}: unknown word(s) {words}{zero}", file=sys.stderr)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'wb') as f:
        pickle.dump(matrix, f, protocol=4)
    print(f"wrote {matrix.shape[0]}x{matrix.shape[1]} word vectors to {args.out}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
