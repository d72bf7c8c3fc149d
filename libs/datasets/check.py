"""Checks of a benchmark's files before a run reads them (docs/method.md §6.5), so that a missing or broken file is
found at start, with its name, and not at the first snapshot thousands of iterations later.

* `header` (train.py's default): every listed image and annotation exists, its header decodes (PIL reads the
  header only: the size and mode, no pixels), the annotation is single-channel and has its image's size.
* `deep` (`--check_data deep`, `tools/make_split_list.py --verify --deep`): also decodes every pixel, so a
  truncated JPEG or PNG is found (OpenCV would decode it with a grey bottom and only libjpeg's message, no file
  name), and the annotation's values must be raw class ids, rows of labels_refined.txt, or 255 (void).
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from libs.datasets.splits import VOID_LABEL

CHECK_MODES = ("off", "header", "deep")
SINGLE_CHANNEL_MODES = ("P", "L")


def file_paths(root: str, subdir: str, stem: str) -> Tuple[str, str]:
    """(image, annotation) of a list entry in the layout of docs/method.md §6.1."""
    return (os.path.join(root, "images", subdir, stem + ".jpg"),
            os.path.join(root, "annotations", subdir, stem + ".png"))


def _open(path: str, deep: bool):
    """(size (W, H), mode, pixels or None); raises OSError/SyntaxError/ValueError for an undecodable file."""
    with Image.open(path) as image:
        if deep:
            image.load()        # decodes every pixel: a truncated file raises "image file is truncated"
            return image.size, image.mode, np.asarray(image) if image.mode in SINGLE_CHANNEL_MODES else None
        return image.size, image.mode, None


def check_entry(root: str, subdir: str, stem: str, num_classes: Optional[int], deep: bool = False) -> List[str]:
    """Problems of one list entry (empty when it is fine). Missing files are reported as `... is missing`.
    num_classes: rows of labels_refined.txt (valid raw ids 0..num_classes-1); only the deep check reads values."""
    entry = f"{subdir}/{stem}"
    image_path, label_path = file_paths(root, subdir, stem)
    missing = [f"{entry}: {kind} {path} is missing"
               for kind, path in (("image", image_path), ("annotation", label_path)) if not os.path.isfile(path)]
    if missing:
        return missing
    problems = []
    try:
        image_size, _, _ = _open(image_path, deep)
    except (OSError, SyntaxError, ValueError) as err:
        return [f"{entry}: image {image_path} cannot be decoded ({err})"]
    try:
        label_size, mode, label = _open(label_path, deep)
    except (OSError, SyntaxError, ValueError) as err:
        return [f"{entry}: annotation {label_path} cannot be decoded ({err})"]
    if mode not in SINGLE_CHANNEL_MODES:
        problems.append(f"{entry}: annotation {label_path} has PIL mode {mode!r}; expected a single-channel PNG "
                        f"(palette 'P' or grey 'L') of raw class ids")
    elif label_size != image_size:
        problems.append(f"{entry}: annotation {label_path} is {label_size[1]}x{label_size[0]} (HxW) but its image "
                        f"is {image_size[1]}x{image_size[0]}")
    if label is not None and num_classes is not None:
        values = np.unique(label)
        bad = values[(values >= num_classes) & (values != VOID_LABEL)]
        if bad.size:
            problems.append(f"{entry}: annotation {label_path} has values {bad.tolist()} that are no class of "
                            f"labels_refined.txt (0..{num_classes - 1}) and not {VOID_LABEL} (void)")
    return problems


def check_entries(root: str, entries: Sequence[Tuple[str, str]], num_classes: Optional[int],
                  deep: bool = False) -> List[str]:
    """Problems of every entry, in list order."""
    problems: List[str] = []
    for subdir, stem in entries:
        problems.extend(check_entry(root, subdir, stem, num_classes, deep))
    return problems


def describe_problems(problems: Sequence[str], what: str, shown: int = 10) -> str:
    """One error message: the counts (missing files first), then the first `shown` problems."""
    missing = sum(p.endswith(" is missing") for p in problems)
    head = f"{what}: {len(problems)} problem(s), {missing} missing file(s):"
    lines = list(problems[:shown]) + ([f"... and {len(problems) - shown} more"] if len(problems) > shown else [])
    return head + "\n  " + "\n  ".join(lines)
