"""Build dataset/cocostuff/{images,annotations}/{train2017,val2017} and split/train_list.npy from COCO-Stuff 164k.

Inputs (the official downloads, unpacked into one folder, given as --coco; or each folder given explicitly):
  images/{train2017,val2017}/<12-digit id>.jpg                      (train2017.zip, val2017.zip)
  stuffthingmaps_trainval2017/{train2017,val2017}/<12-digit id>.png (stuffthingmaps_trainval2017.zip)
The stuffthingmaps PNGs already hold our raw labels: official COCO id − 1 (0 = person ... 181 = wood) and
255 = unlabeled, so they are placed unchanged (symlinked by default: the images are 19 GB).

Output (docs/method.md §6.1):
  <out>/images/<subdir>/<stem>.jpg, <out>/annotations/<subdir>/<stem>.png
  <out>/split/train_list.npy  (missing from the CaGNet release; built like tools/make_split_list.py does)
and a comparison of the shipped `test_list.npy` with the produced val2017 set (exit status 1 if entries lack files).

    python -m tools.prepare_cocostuff --coco ~/data/cocostuff-164k --out dataset/cocostuff
"""
import argparse
import os
import sys
from typing import Dict, List, Optional, Tuple

if not __package__:  # `python tools/<name>.py`: the repository root on the path, as `python -m tools.<name>` has it
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from PIL import Image

from tools.prepare_voc12 import LINK_MODES, place
from tools.split_lists import build_split_list, save_split_list, verify_split_list

SUBDIRS = ('train2017', 'val2017')
NUM_RAW = 182  # COCO-Stuff 164k: official ids 1..182 stored as 0..181


def check_label_values(path: str) -> None:
    """Raise if a stuffthingmap holds values outside 0..181 and 255 (e.g. the stuff-only maps by mistake)."""
    with Image.open(path) as pil:
        label = np.array(pil)
    bad = np.setdiff1d(np.unique(label), np.r_[np.arange(NUM_RAW), 255])
    if bad.size:
        raise ValueError(f"{path} holds values {bad.tolist()}; COCO-Stuff 164k stuffthingmaps hold 0..181 "
                         f"(official id - 1) and 255 (unlabeled). Is this the stuffthingmaps_trainval2017 archive?")


def prepare_cocostuff(images: str, annotations: str, out: str, mode: str = 'symlink',
                      check_values: bool = False) -> Tuple[Dict[str, List[str]], Dict[str, List[str]]]:
    """Place every annotated image; return (stems placed per subdir, annotation stems without image per subdir)."""
    placed, without_image = {}, {}
    for subdir in SUBDIRS:
        ann_dir = os.path.join(annotations, subdir)
        if not os.path.isdir(ann_dir):
            raise FileNotFoundError(f"{ann_dir} does not exist; expected stuffthingmaps_trainval2017/{subdir}/"
                                    f"<id>.png from the COCO-Stuff 164k release")
        stems = sorted(f[:-4] for f in os.listdir(ann_dir) if f.endswith('.png'))
        placed[subdir], without_image[subdir] = [], []
        for stem in stems:
            image = os.path.join(images, subdir, stem + '.jpg')
            label = os.path.join(ann_dir, stem + '.png')
            if not os.path.isfile(image):
                without_image[subdir].append(stem)
                continue
            if check_values:
                check_label_values(label)
            place(image, os.path.join(out, 'images', subdir, stem + '.jpg'), mode)
            place(label, os.path.join(out, 'annotations', subdir, stem + '.png'), mode)
            placed[subdir].append(stem)
    return placed, without_image


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--coco', help='folder holding images/ and stuffthingmaps_trainval2017/')
    parser.add_argument('--images', help='folder holding train2017/ and val2017/ JPEGs (default <coco>/images)')
    parser.add_argument('--annotations',
                        help='folder holding train2017/ and val2017/ stuffthingmaps (default '
                             '<coco>/stuffthingmaps_trainval2017)')
    parser.add_argument('--out', default='dataset/cocostuff', help='output dataset root (default dataset/cocostuff)')
    parser.add_argument('--mode', choices=LINK_MODES, default='symlink', help='how files are placed')
    parser.add_argument('--check-values', action='store_true',
                        help='read every annotation and check its values are 0..181 or 255 (slow)')
    parser.add_argument('--overwrite-list', action='store_true', help='replace an existing split/train_list.npy')
    args = parser.parse_args(argv)
    if not (args.coco or (args.images and args.annotations)):
        parser.error('give --coco, or both --images and --annotations')
    images = args.images or os.path.join(args.coco, 'images')
    annotations = args.annotations or os.path.join(args.coco, 'stuffthingmaps_trainval2017')

    placed, without_image = prepare_cocostuff(images, annotations, args.out, args.mode, args.check_values)
    for subdir in SUBDIRS:
        print(f"{subdir}: placed {len(placed[subdir])} image/annotation pairs in {args.out}")
        if without_image[subdir]:
            print(f"warning: {len(without_image[subdir])} {subdir} annotation(s) have no image in "
                  f"{os.path.join(images, subdir)} and were skipped: {', '.join(without_image[subdir][:5])}",
                  file=sys.stderr)

    split_dir = os.path.join(args.out, 'split')
    train_list = os.path.join(split_dir, 'train_list.npy')
    if os.path.exists(train_list) and not args.overwrite_list:
        print(f"{train_list} exists; left unchanged (pass --overwrite-list to rebuild it)")
    else:
        entries, _ = build_split_list(os.path.join(args.out, 'annotations'), 'train2017')
        save_split_list(entries, train_list)
        print(f"wrote {len(entries)} entries to {train_list}")

    status = 0
    test_list = os.path.join(split_dir, 'test_list.npy')
    if os.path.isfile(test_list):
        problems = verify_split_list(test_list, args.out)
        print(f"{test_list}: {len(problems)} missing file(s)" + (': ' + '; '.join(problems[:5]) if problems else ''))
        status = 1 if problems else 0
    return status


if __name__ == '__main__':
    sys.exit(main())
