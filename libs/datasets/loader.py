"""The zero-shot segmentation loader shared by Pascal-VOC, Pascal-Context and COCO-Stuff (docs/method.md §6.3).

One class serves all three benchmarks because they share the on-disk layout
`<root>/images/<subdir>/<stem>.jpg` + `<root>/annotations/<subdir>/<stem>.png` and differ only in their class
splits. The transform reproduces the original `LoaderZLS` step by step (mean subtraction in BGR, warp to
base×base, random scale, pad, random crop, flip, raw → train id), but draws its randomness from a generator
seeded by (seed, epoch, index) instead of Python's per-worker `random`, so the crops do not depend on the
number of DataLoader workers and any epoch of a resumed run can be replayed.
"""
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from PIL import Image

from models.ops import nearest_resize

from .splits import IGNORE_INDEX, README_LAYOUT_SECTION, ClassSplits

_SINGLE_CHANNEL_MODES = ('P', 'L', '1', 'I', 'I;16', 'I;16L', 'I;16B')


class ZeroShotSegmentation(torch.utils.data.Dataset):
    """Images and label maps of one split, transformed for training or testing.

    Args:
        root: dataset root (config key ROOT), holding `images/` and `annotations/`.
        entries: (subdir, stem) pairs, e.g. from `load_split_list`.
        splits: class splits; `splits.train_map` turns raw labels into train ids in training mode.
        train: True → augmented crops with train ids; False → warped full image with raw labels and the id.
        mean_bgr: per-channel mean subtracted from the BGR image (IMAGE.MEAN.B, .G, .R); no std division.
        crop_size: training crop side (IMAGE.SIZE.TRAIN).
        base_size: side of the pre-scaled image (513 in the original).
        warp: WARP_IMAGE; True → base×base ignoring aspect; False → longer side = base, shorter side
            int(base · short / long) (truncated), and training pads each side to max(its length, crop).
        scale_range: (low, high) of the uniform training scale factor.
        flip: horizontal flip with probability 0.5 in training.
        ignore_index: train id of unseen/background/void/padding pixels.
        seed: augmentation seed; item i of epoch e uses numpy.random.default_rng([seed, e, i]).
        originals: test mode only: add each image's `Original` (untransformed raw label, image path and size)
            to its item, for full-resolution evaluation and prediction pictures; batch such items with
            `collate_test` (the originals differ in size).

    Items:
        train: image float32 (3, crop, crop), label int64 (crop, crop) with values in {0..S-1, ignore_index}.
        test: image float32 (3, base, base) (warp on; warp off: the pre-scaled size), raw label int64 of
            the same height and width, image id (the stem), and with `originals` the `Original`.
    """

    has_labels = True     # annotations exist (ImageFiles has none: its labels are all void)

    def __init__(self, root: str, entries: Sequence[Tuple[str, str]], splits: ClassSplits, train: bool,
                 mean_bgr=(104.008, 116.669, 122.675), crop_size: int = 368, base_size: int = 513,
                 warp: bool = True, scale_range=(0.5, 1.5), flip: bool = True, ignore_index: int = IGNORE_INDEX,
                 seed: int = 0, originals: bool = False):
        self.root = root
        self.entries: List[Tuple[str, str]] = [(str(s), str(t)) for s, t in entries]
        self.splits = splits
        self.train = bool(train)
        if len(mean_bgr) != 3:
            raise ValueError(f"mean_bgr must have 3 values (B, G, R), got {mean_bgr!r}")
        # Faithful to the original: a float64 mean subtracted in place from the float32 image, i.e. the difference
        # is taken in float64 and rounded once to float32 (a float32 mean would differ by up to 1 ulp).
        self.mean_bgr = np.asarray(mean_bgr, dtype=np.float64)
        if int(crop_size) <= 0 or int(base_size) <= 0:
            raise ValueError(f"crop_size and base_size must be positive, got crop_size={crop_size}, "
                             f"base_size={base_size}")
        self.crop_size = int(crop_size)
        self.base_size = int(base_size)
        self.warp = bool(warp)
        low, high = (float(v) for v in scale_range)
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range!r}")
        self.scale_range = (low, high)
        self.flip = bool(flip)
        self.ignore_index = int(ignore_index)
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0 (numpy SeedSequence), got {seed}")
        self.seed = int(seed)
        self.epoch = 0
        if originals and self.train:
            raise ValueError("originals applies to test items only (train=False)")
        self.originals = bool(originals)
        if not self.entries:
            raise ValueError(f"ZeroShotSegmentation({root}): the list of images is empty; the split list must "
                             f"name at least one '<subdir>/<stem>' entry")
        self._check_layout()

    def _check_layout(self) -> None:
        """Fail at construction, not hours into training, when the root or one of its subdirs is missing."""
        expected = (f"expected {self.root}/images/<subdir>/<stem>.jpg and {self.root}/annotations/<subdir>/"
                    f"<stem>.png with <subdir> = train, val (voc12, context) or train2017, val2017 (cocostuff); "
                    f"see {README_LAYOUT_SECTION}")
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"dataset root {self.root} (config key ROOT) does not exist; {expected}")
        for sub in sorted({s for s, _ in self.entries}):
            for kind in ('images', 'annotations'):
                path = os.path.join(self.root, kind, sub)
                if not os.path.isdir(path):
                    raise FileNotFoundError(f"folder {path} does not exist but the split list has entries in "
                                            f"subdir {sub!r}; {expected}")

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of `epoch`.

        DataLoader workers copy the dataset when an iterator is created, so call this before `iter(loader)`
        (and do not use persistent_workers, whose copies would keep the old epoch).
        """
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        mode = 'train' if self.train else 'test'
        return (f"ZeroShotSegmentation(dataset={self.splits.name!r}, root={self.root!r}, mode={mode}, "
                f"items={len(self)}, base_size={self.base_size}, crop_size={self.crop_size}, warp={self.warp}, "
                f"seed={self.seed}, epoch={self.epoch})")

    def image_path(self, index: int) -> str:
        subdir, stem = self.entries[index]
        return os.path.join(self.root, 'images', subdir, stem + '.jpg')

    def label_path(self, index: int) -> str:
        subdir, stem = self.entries[index]
        return os.path.join(self.root, 'annotations', subdir, stem + '.png')

    def read(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Untransformed pair: BGR image float32 (H, W, 3) and raw label int64 (H, W)."""
        image_path, label_path = self.image_path(index), self.label_path(index)
        entry = '/'.join(self.entries[index])
        if not os.path.isfile(image_path):
            raise FileNotFoundError(f"image {image_path} of list entry {entry!r} does not exist "
                                    f"(check the list with tools/make_split_list.py --verify)")
        image = cv2.imread(image_path, cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"image {image_path} of list entry {entry!r} could not be decoded by OpenCV "
                             f"(truncated or not an image file)")
        if not os.path.isfile(label_path):
            raise FileNotFoundError(f"annotation {label_path} of list entry {entry!r} does not exist "
                                    f"(check the list with tools/make_split_list.py --verify)")
        try:
            with Image.open(label_path) as pil:
                mode = pil.mode
                if mode not in _SINGLE_CHANNEL_MODES:
                    raise ValueError(f"annotation {label_path} has PIL mode {mode!r}; expected a single-channel "
                                     f"PNG (palette 'P' or grey 'L') whose pixel values are raw class ids")
                label = np.array(pil)
        except (OSError, SyntaxError) as err:
            raise ValueError(f"annotation {label_path} of list entry {entry!r} could not be read: {err}") from err
        if label.shape != image.shape[:2]:
            raise ValueError(f"annotation {label_path} is {label.shape[0]}x{label.shape[1]} (HxW) but its image "
                             f"{image_path} is {image.shape[0]}x{image.shape[1]}; they must have the same size")
        label = label.astype(np.int64)
        if label.size and (label.min() < 0 or label.max() > 255):
            raise ValueError(f"annotation {label_path} has values in {label.min()}..{label.max()}; raw labels "
                             f"must be 0..255 (255 = void)")
        return image.astype(np.float32), label

    def _prescale(self, image: np.ndarray, label: np.ndarray, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Warp to base×base, or (warp off) bring the longer side to base keeping the aspect ratio."""
        h, w = label.shape
        if self.warp:
            out_h = out_w = self.base_size
        else:
            # Faithful to the original (`_transform` of libs/datasets/cocostuff.py in the release): the shorter
            # side is int(base * short / long), truncated, not rounded; a square image takes the "wide" branch.
            if h > w:
                out_h, out_w = self.base_size, int(self.base_size * w / h)
            else:
                out_h, out_w = int(self.base_size * h / w), self.base_size
            if min(out_h, out_w) < 1:
                raise ValueError(f"image {self.image_path(index)} is {h}x{w} (HxW): with WARP_IMAGE False its "
                                 f"shorter side would become {min(out_h, out_w)} pixels at base size "
                                 f"{self.base_size}; the original's OpenCV resize fails on it too")
        return self._resize(image, label, out_h, out_w)

    @staticmethod
    def _resize(image: np.ndarray, label: np.ndarray, out_h: int, out_w: int) -> Tuple[np.ndarray, np.ndarray]:
        if image.shape[:2] != (out_h, out_w):
            image = cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        return image, nearest_resize(label, (out_h, out_w))

    def _augment(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
                 ) -> Tuple[np.ndarray, np.ndarray]:
        """Random scale, pad to max(pre-scaled side, crop), random crop, random flip (docs/method.md §6.3 steps 3–6).

        Draw order from `rng`: scale, crop row offset, crop column offset, flip coin (always drawn, so the
        stream does not shift when flipping is off).
        """
        scale = rng.uniform(*self.scale_range)
        base_h, base_w = label.shape
        # Faithful to the original: OpenCV gets the factor (dsize None, fx = fy = scale), so the new side is
        # round(side * scale) but pixels are sampled at 1 / scale, not at side / new side.
        label = nearest_resize(label, factor=scale)
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)

        # Faithful to the original: each side is padded up to max(its pre-scaled length, crop), which is
        # max(base, crop) with WARP_IMAGE on.
        h, w = label.shape
        pad_h, pad_w = max(max(base_h, self.crop_size) - h, 0), max(max(base_w, self.crop_size) - w, 0)
        if pad_h or pad_w:
            top, left = pad_h // 2, pad_w // 2
            rows, cols = (top, pad_h - top), (left, pad_w - left)
            # Image 0 is the mean colour (the mean is already subtracted); label 255 is raw void → ignored.
            image = np.pad(image, (rows, cols, (0, 0)), mode='constant', constant_values=0.0)
            label = np.pad(label, (rows, cols), mode='constant', constant_values=IGNORE_INDEX)

        h, w = label.shape
        y = int(rng.integers(0, h - self.crop_size + 1))
        x = int(rng.integers(0, w - self.crop_size + 1))
        image = image[y:y + self.crop_size, x:x + self.crop_size]
        label = label[y:y + self.crop_size, x:x + self.crop_size]

        if rng.random() < 0.5 and self.flip:
            image, label = image[:, ::-1], label[:, ::-1]
        return image, label

    def __getitem__(self, index: int):
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        image, label = self.read(index)
        original = Original(self.image_path(index), label.shape, label if self.has_labels else None)
        image -= self.mean_bgr
        image, label = self._prescale(image, label, index)
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            image, label = self._augment(image, label, rng)
            label = self.splits.train_map[label]
            if self.ignore_index != IGNORE_INDEX:
                label = np.where(label == IGNORE_INDEX, self.ignore_index, label)
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
        label = torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))
        if self.train:
            return image, label
        if self.originals:
            return image, label, self.entries[index][1], original
        return image, label, self.entries[index][1]


@dataclass(frozen=True)
class Original:
    """What a test image was before the transform: its file, its size (H, W) and its raw label (H, W) int64
    (None for images without annotation)."""
    image_path: str
    size: Tuple[int, int]
    label: Optional[np.ndarray] = None


def collate_test(batch):
    """Batch test items that carry an `Original`: images, warped labels and ids as the default collate does,
    the originals (of different sizes) as a list."""
    images, labels, ids = torch.utils.data.default_collate([item[:3] for item in batch])
    return images, labels, ids, [item[3] for item in batch]


class ImageFiles(ZeroShotSegmentation):
    """Any images (files OpenCV reads, any size) through exactly the test transform of the loader: mean
    subtraction in BGR, then the pre-scale to `base_size` (warped with `warp`). Items are those of a test set
    with `originals`: (image, an all-void label, id, Original); ids are the file names without extension.

    For prediction on one's own images (tools/predict.py); there are no annotations and no class splits.
    """

    has_labels = False

    def __init__(self, paths: Sequence[str], mean_bgr=(104.008, 116.669, 122.675), base_size: int = 513,
                 warp: bool = True):
        self.paths = [str(p) for p in paths]
        entries = [(os.path.dirname(p), os.path.splitext(os.path.basename(p))[0]) for p in self.paths]
        super().__init__("", entries, splits=None, train=False, mean_bgr=mean_bgr, base_size=base_size, warp=warp,
                         originals=True)

    def _check_layout(self) -> None:
        missing = [p for p in self.paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"image file(s) not found: {', '.join(missing)}")

    def __repr__(self) -> str:
        return f"ImageFiles(items={len(self)}, base_size={self.base_size}, warp={self.warp})"

    def image_path(self, index: int) -> str:
        return self.paths[index]

    def read(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """BGR image float32 (H, W, 3) (grey and alpha images converted by OpenCV) and an all-void label."""
        path = self.paths[index]
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"image {path} could not be read by OpenCV (not an image, truncated, or a format "
                             f"this OpenCV build does not decode)")
        return image.astype(np.float32), np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)
