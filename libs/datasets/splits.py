"""Seen/unseen class splits, raw→train/test id maps and the image lists of a zero-shot benchmark.

The benchmark files live in `<datadir>/<name>/` (docs/method.md §6.1, §6.2):

* `split/seen_cls.npy`, `split/novel_cls.npy` — int64 raw ids. Their **file order** defines the class ids:
  seen raw id `seen[i]` becomes train/test id `i`, unseen raw id `unseen[j]` becomes test id `S + j`.
  The order is not sorted (Context unseen is 10, 14, 18, 8), so nothing here ever sorts them.
* `labels_refined.txt` — `index<TAB>name` per line; row r names raw label r.
* `split/{train,test}_list.npy` — one annotation path per image; only the last two `/`-separated
  components matter (subdir and file name; `.png` is stripped, Context entries carry no extension).

Everything returned is read-only numpy so that a `ClassSplits` can be shared by model, loader and metrics
without anyone mutating the class order behind the others' backs.
"""
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

# The annotation value of void/unlabelled pixels in every benchmark's PNGs, and the id the id maps give to every
# pixel that is not a class (unseen in training, background, void, padding): one value, owned here.
VOID_LABEL = 255
IGNORE_INDEX = VOID_LABEL
MAP_SIZE = 256  # raw labels are 8-bit PNG values; the maps cover every one of them
SPLIT_FILES = {'train': 'train_list.npy', 'test': 'test_list.npy'}
README_LAYOUT_SECTION = 'dataset/README.md, section "Images and annotations"'
README_COCO_TRAIN_SECTION = 'dataset/README.md, section "COCO-Stuff: the missing train_list.npy"'


@dataclass(frozen=True, eq=False)
class ClassSplits:
    """The class bookkeeping of one benchmark, fixed for a whole run.

    Fields:
        name: dataset name (`voc12`, `context`, `cocostuff`, or any folder name under datadir).
        seen: int64 (S,) raw ids of seen classes, file order = train ids 0..S-1.
        unseen: int64 (U,) raw ids of unseen classes, file order = test ids S..S+U-1 (not sorted).
        raw_names: K names indexed by raw label (2nd column of labels_refined.txt).
        train_map: int64 (256,) raw label → train id; 255 for unseen, background, void and anything else.
        test_map: int64 (256,) raw label → test id; 255 for background, void and anything else.

    eq is off because fields are arrays (element-wise `==` has no single truth value); identity is enough.
    """

    name: str
    seen: np.ndarray
    unseen: np.ndarray
    raw_names: List[str]
    train_map: np.ndarray
    test_map: np.ndarray

    @property
    def num_seen(self) -> int:
        return int(self.seen.shape[0])

    @property
    def num_unseen(self) -> int:
        return int(self.unseen.shape[0])

    @property
    def num_classes(self) -> int:
        """S + U: the number of real classes (the classifier has one more, dead, channel)."""
        return self.num_seen + self.num_unseen

    @property
    def test_ids_to_raw(self) -> np.ndarray:
        """int64 (S+U,): raw id of every test id (seen then unseen, file order)."""
        return np.concatenate([self.seen, self.unseen])

    @property
    def test_names(self) -> List[str]:
        """Class names in test-id order, for per-class reports."""
        return [self.raw_names[r] for r in self.test_ids_to_raw]

    def __repr__(self) -> str:
        return (f"ClassSplits(name={self.name!r}, num_seen={self.num_seen}, num_unseen={self.num_unseen}, "
                f"unseen={self.unseen.tolist()}, num_raw={len(self.raw_names)})")


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def read_class_names(path: str) -> List[str]:
    """Read `labels_refined.txt` (`index<TAB>name`, row = raw label) and return the names by raw id.

    Names may contain spaces (`traffic light`), so only the first tab separates the columns.
    The index column must count 0, 1, 2, ... because the word-vector rows are matched to it by position.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"class list {path} does not exist; expected 'index<TAB>name' lines "
                                f"(see {README_LAYOUT_SECTION})")
    names = []
    with open(path, 'r', encoding='utf-8') as f:
        for line_no, line in enumerate(f, start=1):
            line = line.rstrip('\r\n')
            if not line.strip():
                continue
            parts = line.split('\t', 1)
            if len(parts) != 2 or not parts[0].strip().isdigit():
                raise ValueError(f"{path}, line {line_no}: expected 'index<TAB>name', got {line!r}")
            index = int(parts[0])
            if index != len(names):
                raise ValueError(f"{path}, line {line_no}: expected index {len(names)} (rows must be raw labels "
                                 f"0, 1, 2, ... in order), got {index}")
            names.append(parts[1].strip())
    if not names:
        raise ValueError(f"class list {path} is empty; expected one 'index<TAB>name' line per raw label")
    return names


def _load_class_ids(path: str, num_raw: int) -> np.ndarray:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"class split file {path} does not exist; expected an int64 .npy vector of raw "
                                f"class ids (see {README_LAYOUT_SECTION})")
    ids = np.load(path, allow_pickle=False)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{path}: expected a 1-D integer vector of raw class ids, got dtype {ids.dtype} "
                         f"shape {ids.shape}")
    ids = ids.astype(np.int64)
    bad = ids[(ids < 0) | (ids >= num_raw) | (ids == IGNORE_INDEX)]
    if bad.size:
        raise ValueError(f"{path}: raw class ids {bad.tolist()} are outside 0..{num_raw - 1} "
                         f"(the rows of labels_refined.txt) or equal the ignore label {IGNORE_INDEX}")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{path}: raw class ids {uniq[counts > 1].tolist()} appear more than once")
    return ids


def build_class_splits(name: str, seen: Sequence[int], unseen: Sequence[int],
                       raw_names: Sequence[str]) -> ClassSplits:
    """Make the id maps from seen/unseen raw ids (kept in the given order)."""
    seen = np.asarray(seen, dtype=np.int64).reshape(-1)
    unseen = np.asarray(unseen, dtype=np.int64).reshape(-1)
    if seen.size == 0:
        raise ValueError(f"dataset {name!r}: the seen class list is empty; training needs at least one seen class")
    both = np.intersect1d(seen, unseen)
    if both.size:
        raise ValueError(f"dataset {name!r}: raw ids {both.tolist()} are listed as both seen and unseen")
    if seen.size + unseen.size > IGNORE_INDEX:
        raise ValueError(f"dataset {name!r}: {seen.size + unseen.size} classes do not fit below the ignore "
                         f"label {IGNORE_INDEX}")
    train_map = np.full(MAP_SIZE, IGNORE_INDEX, dtype=np.int64)
    train_map[seen] = np.arange(seen.size)
    test_map = train_map.copy()
    test_map[unseen] = seen.size + np.arange(unseen.size)
    return ClassSplits(name=name, seen=_readonly(seen.copy()), unseen=_readonly(unseen.copy()),
                       raw_names=list(raw_names), train_map=_readonly(train_map), test_map=_readonly(test_map))


def dataset_dir(datadir: str, name: str) -> str:
    """`<datadir>/<name>` with a clear error when it is missing."""
    path = os.path.join(datadir, name)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"dataset folder {path} does not exist (config keys datadir={datadir!r}, dataset={name!r}); expected "
            f"{path}/labels_refined.txt, {path}/split/{{seen_cls,novel_cls,train_list,test_list}}.npy and "
            f"{path}/word_vectors/{{word2vec,fasttext}}.pkl (see {README_LAYOUT_SECTION})")
    return path


def load_class_splits(datadir: str, name: str, num_unseen: Optional[int] = None,
                      out_dim_cls: Optional[int] = None) -> ClassSplits:
    """Read seen/unseen ids and class names of dataset `name` and check them against the config.

    Args:
        datadir: folder holding one subfolder per dataset (config key `datadir`, e.g. `./dataset/`).
        name: dataset folder name (config key `dataset`).
        num_unseen: config key `num_unseen`; must equal U when given.
        out_dim_cls: config key `dis.out_dim_cls`; must equal S + U + 1 when given (the +1 is the dead channel).
    """
    base = dataset_dir(datadir, name)
    raw_names = read_class_names(os.path.join(base, 'labels_refined.txt'))
    seen_path = os.path.join(base, 'split', 'seen_cls.npy')
    novel_path = os.path.join(base, 'split', 'novel_cls.npy')
    seen = _load_class_ids(seen_path, len(raw_names))
    unseen = _load_class_ids(novel_path, len(raw_names))
    if num_unseen is not None and int(num_unseen) != unseen.size:
        raise ValueError(f"config key num_unseen is {num_unseen}, but {novel_path} lists {unseen.size} unseen "
                         f"classes {unseen.tolist()}; set num_unseen: {unseen.size}")
    expected_out = seen.size + unseen.size + 1
    if out_dim_cls is not None and int(out_dim_cls) != expected_out:
        raise ValueError(f"config key dis.out_dim_cls is {out_dim_cls}, but the split files give {seen.size} seen "
                         f"({seen_path}) + {unseen.size} unseen ({novel_path}) + 1 = {expected_out}; "
                         f"set dis.out_dim_cls: {expected_out}")
    return build_class_splits(name, seen, unseen, raw_names)


def parse_list_entry(entry: str) -> Tuple[str, str]:
    """(subdir, stem) from a list entry: its last two path components, a trailing `.png` removed.

    The entries carry the original authors' machine paths (`/home/schoudhu/zss/SBD/...`), so nothing but the
    last two components can be trusted.
    """
    parts = [p for p in str(entry).replace('\\', '/').split('/') if p]
    if len(parts) < 2:
        raise ValueError(f"split list entry {entry!r} has fewer than two path components; expected "
                         f"'.../<subdir>/<stem>.png' or '.../<subdir>/<stem>'")
    subdir, stem = parts[-2], parts[-1]
    if stem.endswith('.png'):
        stem = stem[:-len('.png')]
    return subdir, stem


def split_list_path(datadir: str, name: str, split: str) -> str:
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
    return os.path.join(datadir, name, 'split', SPLIT_FILES[split])


def load_split_list(datadir: str, name: str, split: str) -> List[Tuple[str, str]]:
    """Entries of `<datadir>/<name>/split/<split>_list.npy` as (subdir, stem) pairs, in file order."""
    path = split_list_path(datadir, name, split)
    if not os.path.isfile(path):
        if name == 'cocostuff' and split == 'train':
            raise FileNotFoundError(
                f"{path} does not exist: the CaGNet release does not contain the COCO-Stuff training list. "
                f"Make it from your COCO-Stuff 164k annotations with\n"
                f"  python -m tools.make_split_list --annotations {os.path.join(datadir, name, 'annotations')} "
                f"--subdir train2017 --out {path}\n(see {README_COCO_TRAIN_SECTION})")
        raise FileNotFoundError(f"split list {path} does not exist; expected a numpy unicode vector of annotation "
                                f"paths ending in '<subdir>/<stem>.png' (see {README_LAYOUT_SECTION})")
    raw = np.load(path, allow_pickle=False)
    if raw.ndim != 1 or raw.dtype.kind not in 'US':
        raise ValueError(f"{path}: expected a 1-D numpy string vector, got dtype {raw.dtype} shape {raw.shape}")
    if raw.size == 0:
        raise ValueError(f"split list {path} is empty; expected one annotation path per image")
    entries = [parse_list_entry(e.decode() if isinstance(e, bytes) else e) for e in raw.tolist()]
    return entries
