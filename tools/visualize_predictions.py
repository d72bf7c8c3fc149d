"""Draw a PNG grid of input / ground truth / predictions for a few test images, with a seen/unseen legend.

    python -m tools.visualize_predictions --root dataset/demo --split val \
        --pred step1=DIR1 --pred mixed=DIR2 --num 6 --out demo_output/predictions.png

Each prediction folder holds one PNG per test image, `<image id>.png`, of predicted RAW label ids at the
metric resolution; they are upsampled by nearest neighbour to the image size. By default prediction
pixels that the metrics do not score (ground-truth background or void) are painted like the ground
truth; `--no_mask` shows the raw predictions everywhere. The images shown are chosen deterministically,
preferring images with unseen classes and covering as many different classes as possible.
"""
import argparse
import os
import sys
from pathlib import Path

if not __package__:  # `python tools/<name>.py`: the repository root on the path, as `python -m tools.<name>` has it
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2
import numpy as np
from PIL import Image

from libs.datasets import read_class_names
from libs.visualize import draw_prediction_grid, mask_unevaluated
from models.ops import nearest_resize


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--root', default='dataset/demo', help='folder with images/ and annotations/')
    p.add_argument('--datadir', default=None,
                   help='folder with split/ and labels_refined.txt (default: --root)')
    p.add_argument('--split', default='val', help='image subfolder (default: val)')
    p.add_argument('--pred', action='append', default=[], metavar='NAME=DIR',
                   help='a prediction column: title and folder of <image id>.png files (repeatable)')
    p.add_argument('--num', type=int, default=6, help='number of images (rows) to show (default: 6)')
    p.add_argument('--scale', type=int, default=4, help='upsampling factor of the cells (default: 4)')
    p.add_argument('--no_mask', action='store_true', help='show predictions on background/void pixels too')
    p.add_argument('--out', default='demo_output/predictions.png', help='output PNG')
    return p.parse_args(argv)


def parse_pred(spec):
    """'NAME=DIR' -> (NAME, Path(DIR)); the folder must exist."""
    name, sep, folder = spec.partition('=')
    if not sep or not name or not folder:
        raise ValueError(f'--pred: expected NAME=DIR, got {spec!r}')
    if not Path(folder).is_dir():
        raise FileNotFoundError(f'--pred {name}: prediction folder {folder} not found')
    return name, Path(folder)


def read_label(path):
    """Raw label ids of a PNG as read by the loader (PIL: palette indices or grey values), (H, W) int64."""
    with Image.open(path) as im:
        arr = np.array(im)
    if arr.ndim != 2:
        raise ValueError(f'{path}: expected a single-channel label PNG, got shape {arr.shape}')
    return arr.astype(np.int64)


def choose_images(gts, seen_ids, unseen_ids, num):
    """Pick `num` image ids from {id: gt label map}, deterministically.

    Greedy: each pick maximises (new unseen classes, unseen classes present, new seen classes, classes
    present); ties go to the smaller id. So unseen classes are shown first and as many as possible.
    """
    seen_ids, unseen_ids = set(seen_ids), set(unseen_ids)
    present = {i: set(int(v) for v in np.unique(g)) for i, g in gts.items()}
    chosen, cov_u, cov_s = [], set(), set()
    remaining = sorted(present)
    for _ in range(min(num, len(remaining))):
        def score(i):
            u, s = present[i] & unseen_ids, present[i] & seen_ids
            return (len(u - cov_u), len(u), len(s - cov_s), len(u) + len(s))
        best = max(remaining, key=score)  # max keeps the first of equals: the smallest id
        chosen.append(best)
        remaining.remove(best)
        cov_u |= present[best] & unseen_ids
        cov_s |= present[best] & seen_ids
    return chosen


def main(argv=None):
    args = parse_args(argv)
    root = Path(args.root)
    datadir = Path(args.datadir) if args.datadir else root
    preds = [parse_pred(s) for s in args.pred]
    if args.num < 1:
        raise ValueError(f'--num must be at least 1, got {args.num}')
    names = read_class_names(datadir / 'labels_refined.txt')
    seen = [int(v) for v in np.load(datadir / 'split' / 'seen_cls.npy', allow_pickle=False)]
    unseen = [int(v) for v in np.load(datadir / 'split' / 'novel_cls.npy', allow_pickle=False)]

    ann_dir, img_dir = root / 'annotations' / args.split, root / 'images' / args.split
    if not ann_dir.is_dir():
        raise FileNotFoundError(f'{ann_dir}: annotation folder for split {args.split!r} not found')
    ids = sorted(p.stem for p in ann_dir.glob('*.png'))
    ids = [i for i in ids if (img_dir / f'{i}.jpg').is_file() and all((d / f'{i}.png').is_file() for _, d in preds)]
    if not ids:
        raise FileNotFoundError(f'no image of {ann_dir} has an image in {img_dir} and a prediction in every '
                                f'--pred folder ({", ".join(str(d) for _, d in preds) or "none given"})')
    gts = {i: read_label(ann_dir / f'{i}.png') for i in ids}
    chosen = choose_images(gts, seen, unseen, args.num)

    rows = []
    for i in chosen:
        image = cv2.imread(str(img_dir / f'{i}.jpg'), cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f'{img_dir / (i + ".jpg")}: could not read the image')
        gt = gts[i]
        if gt.shape != image.shape[:2]:
            gt = nearest_resize(gt, image.shape[:2])
        row = [image, gt]
        for _, folder in preds:
            pred = nearest_resize(read_label(folder / f'{i}.png'), image.shape[:2])
            row.append(pred if args.no_mask else mask_unevaluated(pred, gt))
        rows.append(row)
    titles = ['input', 'ground truth'] + [name for name, _ in preds]
    draw_prediction_grid(rows, titles, names, seen, unseen, args.out, scale=args.scale, row_titles=chosen,
                         masked=not args.no_mask)
    print(f'wrote {args.out}: {len(rows)} images ({", ".join(chosen)}), columns {", ".join(titles)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
