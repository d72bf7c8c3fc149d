"""Building and checking split lists (`split/{train,test}_list.npy`): used by the data-preparation tools only.

The lists are numpy unicode vectors of annotation paths; only their last two components (subdir, file name) are
read at run time (libs/datasets/splits.py:parse_list_entry).
"""
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from libs.datasets.check import check_entry, file_paths
from libs.datasets.splits import README_LAYOUT_SECTION, parse_list_entry, read_class_names


def build_split_list(annotations_dir: str, subdir: str, images_dir: Optional[str] = None
                     ) -> Tuple[List[str], List[str]]:
    """List `<annotations_dir>/<subdir>/*.png` whose image `<images_dir>/<subdir>/<stem>.jpg` exists.

    `images_dir` defaults to the `images` folder beside `annotations_dir` (our layout, docs/method.md §6.1).
    Returns (entries, stems_without_image): entries are sorted strings `<annotations_dir>/<subdir>/<stem>.png`.
    Annotations without an image are left out and returned separately so the caller can warn about them.
    """
    ann_sub = os.path.join(annotations_dir, subdir)
    if not os.path.isdir(ann_sub):
        raise FileNotFoundError(f"annotation folder {ann_sub} does not exist; expected <annotations>/<subdir>/"
                                f"<stem>.png (see {README_LAYOUT_SECTION})")
    if images_dir is None:
        images_dir = os.path.join(os.path.dirname(os.path.normpath(annotations_dir)), 'images')
    stems = sorted(f[:-len('.png')] for f in os.listdir(ann_sub) if f.endswith('.png'))
    if not stems:
        raise ValueError(f"annotation folder {ann_sub} contains no .png files")
    entries, without_image = [], []
    for stem in stems:
        if os.path.isfile(os.path.join(images_dir, subdir, stem + '.jpg')):
            entries.append(f"{annotations_dir.rstrip('/')}/{subdir}/{stem}.png")
        else:
            without_image.append(stem)
    return entries, without_image


def save_split_list(entries: Sequence[str], path: str) -> None:
    """Save entries as a numpy unicode vector (loadable without pickle, like the shipped lists)."""
    if not entries:
        raise ValueError(f"refusing to write an empty split list to {path}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'wb') as f:
        np.save(f, np.asarray(list(entries), dtype=str))


def verify_split_list(list_path: str, root: str, deep: bool = False) -> List[str]:
    """Check that every entry of a split list has its image and annotation under `root`, and that their headers
    decode (libs/datasets/check.py); `deep` decodes every pixel and checks the annotation's values against
    `<root>/labels_refined.txt` (when it exists) and 255.

    Returns one human-readable problem per missing file or broken pair (empty when all are fine).
    """
    if not os.path.isfile(list_path):
        raise FileNotFoundError(f"split list {list_path} does not exist")
    raw = np.load(list_path, allow_pickle=False)
    if raw.ndim != 1 or raw.size == 0:
        raise ValueError(f"split list {list_path} is empty or not a vector (shape {raw.shape})")
    names = os.path.join(root, 'labels_refined.txt')
    num_classes = len(read_class_names(names)) if deep and os.path.isfile(names) else None
    problems = []
    for entry in raw.tolist():
        subdir, stem = parse_list_entry(entry)
        missing = [f"{entry}: {kind} {path} is missing"
                   for kind, path in zip(('image', 'annotation'), file_paths(root, subdir, stem))
                   if not os.path.isfile(path)]
        problems.extend(missing or check_entry(root, subdir, stem, num_classes, deep))
    return problems

