"""Build a word-vector table (word2vec.pkl / fasttext.pkl) for a class list, so a new dataset can be added.

Row r of the output is the vector of raw class r of `labels_refined.txt` (`index<TAB>name`). A multi-word name
(`potted_plant`, `wall-concrete`, `traffic light`: split on `_`, `-` and spaces) is the mean of the vectors of
its words that the model knows; a word is looked up as written, then lower-cased. Each row is then scaled to
unit L2 norm, like the shipped VOC/COCO files (`--no-normalise` keeps raw magnitudes, like the Context files;
the loader normalises the final embedding anyway unless emb_without_normal is set). A name with no known word
is an error, unless `--allow-missing` (then its row is zero and a warning names it). The output is a pickled
float64 numpy array (K, D), D = the model's dimension (300 for the usual word2vec / fastText models).

    python tools/build_word_vectors.py --labels dataset/mine/labels_refined.txt \
        --model GoogleNews-vectors-negative300.bin --format word2vec-binary --out dataset/mine/word_vectors/word2vec.pkl

Model formats: `kv` (gensim KeyedVectors.save), `word2vec-binary`, `word2vec-text` (e.g. fastText's .vec files).
"""
import argparse
import os
import pickle
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libs.datasets.embeddings import build_word_vectors  # noqa: E402
from libs.datasets.splits import read_class_names  # noqa: E402

FORMATS = ('kv', 'word2vec-binary', 'word2vec-text')


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
