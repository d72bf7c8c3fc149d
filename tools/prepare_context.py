"""Build dataset/context/{images,annotations}/{train,val} (CaGNet's 33-class PASCAL-Context) from the public release.

Inputs (unpacked; https://cs.stanford.edu/~roozbeh/pascal-context/ and the PASCAL VOC 2010 site), any one of:
  trainval.tar.gz           trainval/<stem>.mat, 10,103 files, variable LabelMap (uint16: 0 = unlabeled,
                            1..459 = the ids of labels.txt), and labels.txt, 459 lines 'id: name'
  59_context_labels.tar.gz  59_context_labels/<stem>.png (pixel = an id of 59_labels.txt, 0 = everything else),
                            names in 59_labels.txt ('id: name', a separate download)
  33_context_labels.tar.gz  33_context_labels/<stem>.png with 33_labels.txt: already these 33 classes
plus VOCtrainval_03-May-2010.tar for the images (VOCdevkit/VOC2010/JPEGImages/<stem>.jpg).
--labels names the folder of label maps (or the folder holding trainval/); a .mat map may also be a 59-class
one (variable LabelMap, or its only 2-D array) if --names gives its class list.

The release's classes are mapped onto the shipped `dataset/context/labels_refined.txt` BY NAME, through the
table `CLASS_NAMES` below; each entry is checked against both lists before any file is touched, so a wrong
name fails at once and names the entry. Every class outside the 33 becomes 0 (unlabeled, ignored by training
and evaluation), as in the 33-class release.

Output (method-spec §6.1), for exactly the stems of the shipped lists (train = train_list.npy, val = test_list.npy):
  <out>/annotations/{train,val}/<stem>.png  8-bit palette PNG: 0 unlabeled, 1..33 the labels_refined rows
  <out>/images/{train,val}/<stem>.jpg       the VOC 2010 JPEG, symlinked (default), copied or hard-linked
Afterwards each list is checked against the files (counts, missing images or annotations); any problem is
reported and makes the exit status 1.

    python -m tools.prepare_context --labels ~/data/trainval --voc2010 ~/data/VOCdevkit/VOC2010 --out dataset/context
"""
import argparse
import difflib
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

if not __package__:  # `python tools/<name>.py`: the repository root on the path, as `python -m tools.<name>` has it
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from PIL import Image

from libs.datasets.splits import SPLIT_FILES, parse_list_entry, read_class_names
from tools.prepare_voc12 import LINK_MODES, place, write_label_png
from tools.split_lists import verify_split_list

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(REPO, 'dataset', 'context')

# labels_refined.txt name -> the names a public class list may use for it, in order of preference. The VOC
# names are the PASCAL ones ('pottedplant', 'tvmonitor'); the 459-class labels.txt calls the dining table
# 'table', while 33_labels.txt and 59_labels.txt say 'diningtable'.
CLASS_NAMES: Dict[str, Tuple[str, ...]] = {
    'aeroplane': ('aeroplane',), 'bicycle': ('bicycle',), 'bird': ('bird',), 'boat': ('boat',),
    'bottle': ('bottle',), 'bus': ('bus',), 'car': ('car',), 'cat': ('cat',), 'chair': ('chair',),
    'cow': ('cow',), 'diningtable': ('diningtable', 'table'), 'dog': ('dog',), 'horse': ('horse',),
    'motorbike': ('motorbike',), 'person': ('person',), 'potted_plant': ('pottedplant',), 'sheep': ('sheep',),
    'sofa': ('sofa',), 'train': ('train',), 'tv': ('tvmonitor',),
    'sky': ('sky',), 'grass': ('grass',), 'ground': ('ground',), 'road': ('road',), 'building': ('building',),
    'tree': ('tree',), 'water': ('water',), 'mountain': ('mountain',), 'wall': ('wall',), 'floor': ('floor',),
    'track': ('track',), 'keyboard': ('keyboard',), 'ceiling': ('ceiling',),
}
SUBDIRS = ('train', 'val')
LABEL_EXTENSIONS = ('.mat', '.png')
_SINGLE_CHANNEL_MODES = ('L', 'P', 'I', 'I;16', 'I;16L', 'I;16B')


def read_public_names(path: str) -> Dict[int, str]:
    """The release's class list: 'id: name' lines (labels.txt, 59_labels.txt, 33_labels.txt) as {id: name}."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"class list {path} does not exist; expected the release's 'id: name' lines "
                                f"(labels.txt of trainval.tar.gz, 59_labels.txt or 33_labels.txt)")
    names: Dict[int, str] = {}
    with open(path, encoding='utf-8') as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            head, sep, name = line.partition(':')
            if not sep or not head.strip().isdigit() or not name.strip():
                raise ValueError(f"{path}, line {line_no}: expected 'id: name', got {line.rstrip()!r}")
            class_id = int(head)
            if class_id == 0 or class_id in names:
                raise ValueError(f"{path}, line {line_no}: id {class_id} is zero or repeated; expected unique "
                                 f"ids >= 1 (0 means unlabeled)")
            names[class_id] = name.strip()
    if not names:
        raise ValueError(f"class list {path} is empty; expected 'id: name' lines")
    return names


@dataclass(frozen=True)
class ClassMapping:
    """Public id -> our raw id (`lut`), which public values may occur (`known`), and what matched what."""
    lut: np.ndarray                      # uint8 (max public id + 1,), 0 for classes outside the 33
    known: np.ndarray                    # bool, same length: 0 and every id of the names file
    matches: List[Tuple[str, str, int]]  # (our name, public name, public id), in labels_refined order


def resolve_classes(refined: Sequence[str], public: Dict[int, str], names_path: str,
                    table: Optional[Dict[str, Tuple[str, ...]]] = None) -> ClassMapping:
    """Check `table` (default CLASS_NAMES) against both class lists and build the id mapping.

    `refined` are the labels_refined.txt names by raw id (row 0 = unlabeled). Raises ValueError naming the
    entry when a table key is not one of our classes, one of our classes has no entry, none of an entry's
    names is in the public list, or two entries land on the same public class.
    """
    table = CLASS_NAMES if table is None else table
    ours = {name: raw for raw, name in enumerate(refined) if raw > 0}
    for key in table:
        if key not in ours:
            raise ValueError(f"class table entry {key!r} is not a class of the labels_refined.txt list "
                             f"({', '.join(ours)})")
    missing = [name for name in ours if name not in table]
    if missing:
        raise ValueError(f"classes {missing} of the labels_refined.txt list have no entry in the class table")
    ids_by_name: Dict[str, List[int]] = {}
    for class_id, name in public.items():
        ids_by_name.setdefault(name, []).append(class_id)
    size = max(public) + 1
    lut, known = np.zeros(size, np.uint8), np.zeros(size, bool)
    known[0] = True
    known[list(public)] = True
    matches, taken = [], {}
    for name, raw in ours.items():
        found = [n for n in table[name] if n in ids_by_name]
        if not found:
            close = difflib.get_close_matches(table[name][0], list(ids_by_name), n=3)
            raise ValueError(f"class table entry {name!r}: none of its names {list(table[name])} is in {names_path}"
                             + (f" (close: {close})" if close else ""))
        public_name = found[0]
        if len(ids_by_name[public_name]) > 1:
            raise ValueError(f"class table entry {name!r}: {public_name!r} has several ids in {names_path} "
                             f"({ids_by_name[public_name]}); the mapping by name would be ambiguous")
        class_id = ids_by_name[public_name][0]
        if class_id in taken:
            raise ValueError(f"class table entries {taken[class_id]!r} and {name!r} both map to {public_name!r} "
                             f"(id {class_id}) of {names_path}")
        taken[class_id] = name
        lut[class_id] = raw
        matches.append((name, public_name, class_id))
    return ClassMapping(lut=lut, known=known, matches=matches)


def read_label_map(path: str) -> np.ndarray:
    """int64 (H, W) label map of a public release file: `.mat` (LabelMap) or single-channel `.png`."""
    if path.endswith('.mat'):
        from scipy.io import loadmat
        try:
            mat = loadmat(path)
        except (NotImplementedError, ValueError, OSError) as err:
            raise ValueError(f"{path}: not a MATLAB file scipy can read ({err})") from err
        arrays = {k: v for k, v in mat.items() if not k.startswith('__') and isinstance(v, np.ndarray)
                  and v.ndim == 2 and v.dtype.kind in 'iuf'}
        if 'LabelMap' in arrays:
            label = arrays['LabelMap']
        elif len(arrays) == 1:
            label = next(iter(arrays.values()))
        else:
            raise ValueError(f"{path}: expected the variable 'LabelMap' (or a single 2-D array), found "
                             f"{sorted(k for k in mat if not k.startswith('__'))}")
    else:
        with Image.open(path) as pil:
            if pil.mode not in _SINGLE_CHANNEL_MODES:
                raise ValueError(f"{path} has PIL mode {pil.mode!r}; expected a single-channel PNG whose pixels "
                                 f"are class ids")
            label = np.array(pil)
    if label.dtype.kind == 'f':
        if not np.array_equal(label, np.round(label)):
            raise ValueError(f"{path}: the label map holds non-integer values")
    if label.size and label.min() < 0:
        raise ValueError(f"{path}: the label map holds negative values ({int(label.min())})")
    return label.astype(np.int64)


def convert(label: np.ndarray, mapping: ClassMapping) -> np.ndarray:
    """uint8 map of our raw ids; raises ValueError listing values that are neither 0 nor ids of the names file."""
    values = np.unique(label)
    bad = [int(v) for v in values if v >= len(mapping.known) or not mapping.known[v]]
    if bad:
        raise ValueError(f"values {bad[:10]} are neither 0 (unlabeled) nor ids of the class list")
    return mapping.lut[label]


def find_label_dir(path: str) -> str:
    """The folder holding the `<stem>.mat` / `<stem>.png` maps: `path`, `path/trainval` or `path/<its name>`."""
    for cand in (path, os.path.join(path, 'trainval'), os.path.join(path, os.path.basename(os.path.normpath(path)))):
        if os.path.isdir(cand) and any(e.name.endswith(LABEL_EXTENSIONS) for e in os.scandir(cand)):
            return cand
    raise FileNotFoundError(f"--labels {path}: neither it nor its trainval/ holds .mat or .png label maps; give "
                            f"the unpacked trainval/, 59_context_labels/ or 33_context_labels/ folder")


def find_names_file(label_dir: str, given: str) -> str:
    """labels.txt (or NN_labels.txt for an NN_context_labels folder) in the label folder or its parents."""
    base = os.path.basename(os.path.normpath(label_dir))
    match = re.fullmatch(r'(\d+)_context_labels', base)
    file_names = ['labels.txt'] + ([f'{match.group(1)}_labels.txt'] if match else [])
    folders = [label_dir, os.path.dirname(os.path.normpath(label_dir)), given]
    tried = []
    for folder in folders:
        for name in file_names:
            cand = os.path.join(folder, name)
            tried.append(cand)
            if os.path.isfile(cand):
                return cand
    raise FileNotFoundError(f"no class list found (tried {tried}); pass --names: labels.txt of trainval.tar.gz, "
                            f"59_labels.txt or 33_labels.txt")


def find_jpeg_dir(path: str) -> str:
    """VOC 2010's JPEGImages folder at or under `path` (VOC2010, VOCdevkit/VOC2010 or JPEGImages itself)."""
    candidates = [os.path.join(path, 'JPEGImages'), os.path.join(path, 'VOC2010', 'JPEGImages'),
                  os.path.join(path, 'VOCdevkit', 'VOC2010', 'JPEGImages')]
    if os.path.basename(os.path.normpath(path)) == 'JPEGImages':
        candidates.insert(0, path)
    for cand in candidates:
        if os.path.isdir(cand):
            return cand
    raise FileNotFoundError(f"--voc2010 {path}: none of {candidates} exists; point it at the unpacked "
                            f"VOCtrainval_03-May-2010.tar (VOCdevkit/VOC2010)")


def read_lists(split_dir: str) -> Dict[str, List[Tuple[str, str]]]:
    """{list file name: [(subdir, stem)]} of the shipped train and test lists."""
    lists = {}
    for split in ('train', 'test'):
        path = os.path.join(split_dir, SPLIT_FILES[split])
        if not os.path.isfile(path):
            raise FileNotFoundError(f"split list {path} does not exist; --split-dir must hold the shipped "
                                    f"{SPLIT_FILES['train']} and {SPLIT_FILES['test']}")
        entries = [parse_list_entry(e) for e in np.load(path, allow_pickle=False).tolist()]
        unknown = sorted({s for s, _ in entries} - set(SUBDIRS))
        if unknown:
            raise ValueError(f"{path}: entries in subdirs {unknown}; Pascal-Context uses {list(SUBDIRS)}")
        lists[SPLIT_FILES[split]] = entries
    return lists


@dataclass
class Result:
    written: Dict[str, int] = field(default_factory=lambda: {s: 0 for s in SUBDIRS})
    problems: List[str] = field(default_factory=list)


def prepare_context(label_dir: str, jpeg_dir: str, out: str, mapping: ClassMapping,
                    lists: Dict[str, List[Tuple[str, str]]], mode: str = 'symlink') -> Result:
    """Convert and place every listed image; entries that cannot be made are recorded as problems, not written."""
    result = Result()
    for entries in lists.values():
        for subdir, stem in entries:
            where = f"{subdir}/{stem}"
            sources = [os.path.join(label_dir, stem + ext) for ext in LABEL_EXTENSIONS]
            label_src = next((p for p in sources if os.path.isfile(p)), None)
            image_src = os.path.join(jpeg_dir, stem + '.jpg')
            if label_src is None:
                result.problems.append(f"{where}: no label map {' or '.join(sources)}")
                continue
            if not os.path.isfile(image_src):
                result.problems.append(f"{where}: image {image_src} is missing")
                continue
            try:
                label = convert(read_label_map(label_src), mapping)
                with Image.open(image_src) as pil:
                    width, height = pil.size
            except (ValueError, OSError) as err:
                result.problems.append(f"{where}: {label_src}: {err}")
                continue
            if label.shape != (height, width):
                result.problems.append(f"{where}: label map {label_src} is {label.shape[0]}x{label.shape[1]} "
                                       f"(HxW) but image {image_src} is {height}x{width}")
                continue
            write_label_png(label, os.path.join(out, 'annotations', subdir, stem + '.png'))
            place(image_src, os.path.join(out, 'images', subdir, stem + '.jpg'), mode)
            result.written[subdir] += 1
    return result


def verify(out: str, split_dir: str, lists: Dict[str, List[Tuple[str, str]]]) -> Tuple[List[str], List[str]]:
    """(report lines, missing files): per list its size and missing files, per folder its count and extras."""
    report, missing = [], []
    for list_name, entries in lists.items():
        absent = verify_split_list(os.path.join(split_dir, list_name), out)
        missing += absent
        report.append(f"{os.path.join(split_dir, list_name)}: {len(entries)} entries, {len(absent)} missing file(s)")
    listed = {(s, t) for entries in lists.values() for s, t in entries}
    for subdir in SUBDIRS:
        for kind, ext in (('images', '.jpg'), ('annotations', '.png')):
            folder = os.path.join(out, kind, subdir)
            stems = [f[:-len(ext)] for f in os.listdir(folder) if f.endswith(ext)] if os.path.isdir(folder) else []
            extra = sum((subdir, s) not in listed for s in stems)
            report.append(f"{folder}: {len(stems)} file(s)" + (f", {extra} not in the lists (left alone)"
                                                               if extra else ""))
    return report, missing


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m tools.prepare_context', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--labels', required=True,
                        help='unpacked trainval/ (or its parent), 59_context_labels/ or 33_context_labels/')
    parser.add_argument('--names', help="the release's 'id: name' class list (default: labels.txt, or "
                                        "NN_labels.txt for NN_context_labels/, next to or above --labels)")
    parser.add_argument('--voc2010', required=True, help='VOCdevkit/VOC2010 (or a folder containing it)')
    parser.add_argument('--out', default='dataset/context', help='output dataset root (default dataset/context)')
    parser.add_argument('--split-dir', default=os.path.join(SHIPPED, 'split'),
                        help='the train_list.npy / test_list.npy to follow (default: the shipped ones)')
    parser.add_argument('--classes', default=os.path.join(SHIPPED, 'labels_refined.txt'),
                        help='our class list (default: the shipped labels_refined.txt)')
    parser.add_argument('--mode', choices=LINK_MODES, default='symlink', help='how the JPEGs are placed')
    args = parser.parse_args(argv)

    label_dir = find_label_dir(args.labels)
    names_path = args.names or find_names_file(label_dir, args.labels)
    public = read_public_names(names_path)
    mapping = resolve_classes(read_class_names(args.classes), public, names_path)
    jpeg_dir = find_jpeg_dir(args.voc2010)
    lists = read_lists(args.split_dir)
    renamed = [f"{ours} <- {theirs!r} ({i})" for ours, theirs, i in mapping.matches if ours != theirs]
    print(f"label maps: {label_dir}; classes: {names_path} ({len(public)} classes, {len(mapping.matches)} "
          f"kept" + (f"; {', '.join(renamed)}" if renamed else "") + ")")

    result = prepare_context(label_dir, jpeg_dir, args.out, mapping, lists, args.mode)
    print(f"wrote {result.written['train']} train and {result.written['val']} val images to {args.out}")
    report, missing = verify(args.out, args.split_dir, lists)
    for line in report:
        print(line)
    for title, lines in ((f"{len(result.problems)} listed image(s) could not be made:", result.problems),
                         (f"{len(missing)} file(s) of the lists are missing:", missing)):
        if lines:
            print(title, file=sys.stderr)
            for line in lines[:20]:
                print(f"  {line}", file=sys.stderr)
            if len(lines) > 20:
                print(f"  ... and {len(lines) - 20} more", file=sys.stderr)
    if result.problems or missing:
        return 1
    print("ok: every listed image has its image and annotation")
    return 0


if __name__ == '__main__':
    sys.exit(main())
