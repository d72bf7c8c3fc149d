"""Build dataset/voc12/{images,annotations}/{train,val} from the official PASCAL VOC 2012 and SBD downloads.

Inputs (the official archives, unpacked):
  --voc  VOCdevkit/VOC2012 (or a folder containing it): JPEGImages/*.jpg, SegmentationClass/*.png (palette PNG,
         index = class 0..20, 255 = void boundary), ImageSets/Segmentation/{train,val}.txt
  --sbd  benchmark_RELEASE (or its dataset/ folder): dataset/cls/<stem>.mat (struct GTcls, field Segmentation =
         uint8 class map 0..20), dataset/{train,val}.txt

Output (docs/method.md §6.1):
  <out>/images/{train,val}/<stem>.jpg       copied from JPEGImages (byte-exact) or symlinked
  <out>/annotations/{train,val}/<stem>.png  single-channel palette PNG, pixel = raw label
  train = (SBD train ∪ SBD val ∪ VOC train) − VOC val (the usual 10,582-image "train_aug");  val = VOC val (1,449).

For a training image that VOC itself annotates, VOC's mask is used (the official one, with 255 void borders);
SBD's mask is used only for the images VOC does not annotate. Afterwards the produced sets are compared with
the shipped lists `<split-dir>/{train,test}_list.npy`; entries of those lists that were not produced are
reported and make the exit status 1.

    python -m tools.prepare_voc12 --voc ~/data/VOCdevkit --sbd ~/data/benchmark_RELEASE --out dataset/voc12
"""
import argparse
import os
import shutil
import sys
from typing import Dict, List, Optional, Tuple

if not __package__:  # `python tools/<name>.py`: the repository root on the path, as `python -m tools.<name>` has it
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from PIL import Image

from libs.datasets.splits import parse_list_entry

LINK_MODES = ('copy', 'symlink', 'hardlink')


def voc_palette() -> List[int]:
    """The PASCAL VOC colour map as a flat list of 768 ints (class c's colour from the bits of c)."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def _first_dir(candidates: List[str], required: List[str], what: str, given: str) -> str:
    for cand in candidates:
        if all(os.path.exists(os.path.join(cand, r)) for r in required):
            return cand
    raise FileNotFoundError(f"{what}: none of {candidates} (from {given!r}) contains {required}; "
                            f"point the option at the unpacked official archive")


def find_voc_root(path: str) -> str:
    """The VOC2012 folder (with JPEGImages, SegmentationClass, ImageSets/Segmentation) at or under `path`."""
    return _first_dir([path, os.path.join(path, 'VOC2012'), os.path.join(path, 'VOCdevkit', 'VOC2012')],
                      ['JPEGImages', 'SegmentationClass', os.path.join('ImageSets', 'Segmentation')],
                      '--voc', path)


def find_sbd_root(path: str) -> str:
    """SBD's dataset/ folder (with cls/, train.txt, val.txt) at or under `path`."""
    return _first_dir([path, os.path.join(path, 'dataset'), os.path.join(path, 'benchmark_RELEASE', 'dataset')],
                      ['cls', 'train.txt', 'val.txt'], '--sbd', path)


def read_stems(path: str) -> List[str]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image-set file {path} does not exist")
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip()]


def read_sbd_label(path: str) -> np.ndarray:
    """uint8 (H, W) class map from an SBD `cls/<stem>.mat` (struct GTcls, field Segmentation)."""
    from scipy.io import loadmat
    mat = loadmat(path, squeeze_me=True, struct_as_record=False)
    if 'GTcls' not in mat or not hasattr(mat['GTcls'], 'Segmentation'):
        raise ValueError(f"{path}: expected a struct 'GTcls' with field 'Segmentation' (SBD cls layout)")
    label = np.asarray(mat['GTcls'].Segmentation)
    if label.ndim != 2 or label.min() < 0 or label.max() > 255:
        raise ValueError(f"{path}: GTcls.Segmentation must be a 2-D map of values 0..255, got shape "
                         f"{label.shape}, values {label.min()}..{label.max()}")
    return label.astype(np.uint8)


def place(src: str, dst: str, mode: str) -> None:
    """Copy (byte-exact), symlink or hard-link src to dst, replacing an existing dst."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.lexists(dst):
        os.remove(dst)
    if mode == 'copy':
        shutil.copyfile(src, dst)
    elif mode == 'symlink':
        os.symlink(os.path.abspath(src), dst)
    elif mode == 'hardlink':
        os.link(src, dst)
    else:
        raise ValueError(f"--mode must be one of {LINK_MODES}, got {mode!r}")


def write_label_png(label: np.ndarray, path: str) -> None:
    """Save a raw-label map as a palette PNG (indices = raw labels, VOC colours for viewing)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pil = Image.fromarray(label.astype(np.uint8), mode='L').convert('P')
    pil.putpalette(voc_palette())
    pil.save(path)


def prepare_voc12(voc: str, sbd: str, out: str, mode: str = 'copy') -> Dict[str, List[str]]:
    """Write the train/val images and annotations; return the stems written per subdir (sorted)."""
    voc_root, sbd_root = find_voc_root(voc), find_sbd_root(sbd)
    seg_sets = os.path.join(voc_root, 'ImageSets', 'Segmentation')
    voc_train = read_stems(os.path.join(seg_sets, 'train.txt'))
    voc_val = read_stems(os.path.join(seg_sets, 'val.txt'))
    sbd_all = read_stems(os.path.join(sbd_root, 'train.txt')) + read_stems(os.path.join(sbd_root, 'val.txt'))
    val_set = set(voc_val)
    sets = {'train': sorted(set(sbd_all + voc_train) - val_set), 'val': sorted(val_set)}
    for subdir, stems in sets.items():
        for stem in stems:
            image = os.path.join(voc_root, 'JPEGImages', stem + '.jpg')
            if not os.path.isfile(image):
                image = os.path.join(sbd_root, 'img', stem + '.jpg')
            if not os.path.isfile(image):
                raise FileNotFoundError(f"image of {stem} is in neither {voc_root}/JPEGImages nor {sbd_root}/img")
            place(image, os.path.join(out, 'images', subdir, stem + '.jpg'), mode)
            voc_label = os.path.join(voc_root, 'SegmentationClass', stem + '.png')
            dst_label = os.path.join(out, 'annotations', subdir, stem + '.png')
            if os.path.isfile(voc_label):
                place(voc_label, dst_label, mode)
            elif subdir == 'train' and os.path.isfile(os.path.join(sbd_root, 'cls', stem + '.mat')):
                write_label_png(read_sbd_label(os.path.join(sbd_root, 'cls', stem + '.mat')), dst_label)
            else:
                raise FileNotFoundError(f"no annotation for {subdir} image {stem}: neither {voc_label} nor "
                                        f"{os.path.join(sbd_root, 'cls', stem + '.mat')} exists")
    return sets


def compare_with_lists(produced: Dict[str, List[str]], split_dir: str) -> Tuple[int, List[str]]:
    """Compare the shipped lists with what was produced.

    Returns (number of list entries that were not produced, report lines).
    """
    produced_sets = {subdir: set(stems) for subdir, stems in produced.items()}
    report, problems = [], 0
    for list_name in ('train_list.npy', 'test_list.npy'):
        path = os.path.join(split_dir, list_name)
        if not os.path.isfile(path):
            report.append(f"{path}: not present, nothing to compare")
            continue
        entries = [parse_list_entry(e) for e in np.load(path, allow_pickle=False).tolist()]
        missing = [f"{s}/{t}" for s, t in entries if t not in produced_sets.get(s, set())]
        listed = set(entries)
        extra = sum(1 for s in {s for s, _ in entries} for t in produced_sets.get(s, ()) if (s, t) not in listed)
        problems += len(missing)
        shown = (': ' + ', '.join(missing[:5]) + (' ...' if len(missing) > 5 else '')) if missing else ''
        report.append(f"{path}: {len(entries)} entries, {len(missing)} not produced{shown}; "
                      f"{extra} produced image(s) not in this list")
    return problems, report


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--voc', required=True, help='VOCdevkit/VOC2012 or a folder containing it')
    parser.add_argument('--sbd', required=True, help='SBD benchmark_RELEASE or its dataset/ folder')
    parser.add_argument('--out', default='dataset/voc12', help='output dataset root (default dataset/voc12)')
    parser.add_argument('--split-dir', default=None, help='lists to check against (default <out>/split)')
    parser.add_argument('--mode', choices=LINK_MODES, default='copy',
                        help='how JPEGs and VOC masks are placed (masks converted from SBD are always written)')
    args = parser.parse_args(argv)
    produced = prepare_voc12(args.voc, args.sbd, args.out, args.mode)
    print(f"wrote {len(produced['train'])} train and {len(produced['val'])} val images to {args.out}")
    problems, report = compare_with_lists(produced, args.split_dir or os.path.join(args.out, 'split'))
    for line in report:
        print(line)
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
