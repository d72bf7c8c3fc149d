"""Building and checking split lists (`split/{train,test}_list.npy`): used by the data-preparation tools only.

The lists are numpy unicode vectors of annotation paths; only their last two components (subdir, file name) are
read at run time (libs/datasets/splits.py:parse_list_entry).
"""
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from libs.datasets.splits import README_LAYOUT_SECTION, parse_list_entry


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


def verify_split_list(list_path: str, root: str) -> List[str]:
    """Check that every entry of a split list has its image and annotation under `root`.

    Returns one human-readable problem per missing file (empty when all are present).
    """
    if not os.path.isfile(list_path):
        raise FileNotFoundError(f"split list {list_path} does not exist")
    raw = np.load(list_path, allow_pickle=False)
    if raw.ndim != 1 or raw.size == 0:
        raise ValueError(f"split list {list_path} is empty or not a vector (shape {raw.shape})")
    problems = []
    for entry in raw.tolist():
        subdir, stem = parse_list_entry(entry)
        for kind, ext in (('image', '.jpg'), ('annotation', '.png')):
            path = os.path.join(root, 'images' if kind == 'image' else 'annotations', subdir, stem + ext)
            if not os.path.isfile(path):
                problems.append(f"{entry}: {kind} {path} is missing")
    return problems

