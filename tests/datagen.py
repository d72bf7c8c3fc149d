"""Write tiny zero-shot datasets in exactly the real on-disk layout (docs/method.md §6.1) for tests.

Layout written under `datadir` (pass `datadir` as config `datadir` and `<datadir>/<name>` as `ROOT`):

    <name>/images/<subdir>/<stem>.jpg          BGR JPEG written by cv2.imwrite
    <name>/annotations/<subdir>/<stem>.png     single-channel PNG (grey 'L' or palette 'P'), pixel = raw label
    <name>/labels.txt, <name>/labels_refined.txt
    <name>/split/{train_list,test_list}.npy    unicode paths with a foreign machine prefix, like the shipped ones
    <name>/split/{seen_cls,novel_cls}.npy      int64 raw ids in the given (not necessarily sorted) order
    <name>/word_vectors/{word2vec,fasttext}.pkl  pickled float64 (K, dim) arrays, row r = raw class r

Label maps contain background 0, a few rectangles of random classes, and a void (255) line, so every
mapping case (seen, unseen, background, void) occurs. The arrays written are returned for exact assertions
(the JPEG is lossy: compare images loosely, labels exactly).
"""
import os
import pickle
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from PIL import Image

Size = Tuple[int, int]


@dataclass
class ToyDataset:
    datadir: str                       # the config's `datadir`
    name: str                          # the config's `dataset`
    root: str                          # the config's `ROOT` = <datadir>/<name>
    seen: List[int]
    unseen: List[int]
    class_names: List[str]
    train_entries: List[Tuple[str, str]]
    test_entries: List[Tuple[str, str]]
    labels: Dict[str, np.ndarray] = field(default_factory=dict)   # stem -> raw label (H, W) uint8
    images: Dict[str, np.ndarray] = field(default_factory=dict)   # stem -> BGR uint8 (H, W, 3) before JPEG


def class_colours(num_classes: int, seed: int = 0) -> np.ndarray:
    """uint8 (num_classes, 3) distinct-ish BGR colours, one per raw class."""
    rng = np.random.default_rng([seed, 7])
    return rng.integers(20, 236, size=(num_classes, 3)).astype(np.uint8)


def toy_palette() -> List[int]:
    """A 256-entry RGB palette (flat list of 768 ints) for palette-mode annotations."""
    return [(i * 37 + c * 91) % 256 for i in range(256) for c in range(3)]


def make_label(size: Size, num_classes: int, rng: np.random.Generator, n_rects: int = 3,
               void_line: bool = True, classes: Optional[Sequence[int]] = None) -> np.ndarray:
    """uint8 (H, W) raw label: background 0, `n_rects` rectangles of random classes, one void (255) row."""
    h, w = size
    label = np.zeros((h, w), dtype=np.uint8)
    pool = list(classes) if classes is not None else list(range(1, num_classes))
    for _ in range(n_rects):
        y0, x0 = int(rng.integers(0, h - 1)), int(rng.integers(0, w - 1))
        y1, x1 = int(rng.integers(y0 + 1, h + 1)), int(rng.integers(x0 + 1, w + 1))
        label[y0:y1, x0:x1] = pool[int(rng.integers(0, len(pool)))]
    if void_line:
        label[int(rng.integers(0, h))] = 255
    return label


def make_image(label: np.ndarray, colours: np.ndarray, rng: np.random.Generator, noise: int = 8) -> np.ndarray:
    """uint8 BGR (H, W, 3): the colour of each pixel's class plus noise; void pixels are mid grey."""
    image = np.full(label.shape + (3,), 128, dtype=np.int32)
    known = label < len(colours)
    image[known] = colours[label[known]]
    image += rng.integers(-noise, noise + 1, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_pair(root: str, subdir: str, stem: str, image: np.ndarray, label: np.ndarray,
               palette: bool = False) -> Tuple[str, str]:
    """Write `<root>/images/<subdir>/<stem>.jpg` and `<root>/annotations/<subdir>/<stem>.png`."""
    img_dir = os.path.join(root, 'images', subdir)
    ann_dir = os.path.join(root, 'annotations', subdir)
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)
    img_path = os.path.join(img_dir, stem + '.jpg')
    ann_path = os.path.join(ann_dir, stem + '.png')
    if not cv2.imwrite(img_path, image, [cv2.IMWRITE_JPEG_QUALITY, 95]):
        raise OSError(f"cv2.imwrite failed for {img_path}")
    pil = Image.fromarray(label.astype(np.uint8), mode='L')
    if palette:
        pil = pil.convert('P')
        pil.putpalette(toy_palette())
    pil.save(ann_path)
    return img_path, ann_path


def write_split_list(path: str, entries: Sequence[Tuple[str, str]], prefix: str, ext: str = '.png') -> None:
    """Save `<prefix>/<subdir>/<stem><ext>` strings as a numpy unicode vector."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        np.save(f, np.asarray([f"{prefix}/{s}/{t}{ext}" for s, t in entries], dtype=str))


def write_word_vectors(path: str, num_classes: int, dim: int, seed: int, scale: float = 1.0,
                       unit_norm: bool = True) -> np.ndarray:
    """Pickle a float64 (num_classes, dim) array; unit rows (like VOC/COCO) unless `unit_norm` is false."""
    rng = np.random.default_rng([seed, 11, dim])
    vectors = rng.normal(size=(num_classes, dim))
    if unit_norm:
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors *= scale
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        pickle.dump(vectors, f, protocol=3)
    return vectors


def write_class_files(base: str, class_names: Sequence[str]) -> None:
    """labels_refined.txt (`index<TAB>name`) and labels.txt (`index: name`, classes only)."""
    os.makedirs(base, exist_ok=True)
    with open(os.path.join(base, 'labels_refined.txt'), 'w') as f:
        f.write('\n'.join(f"{i}\t{n}" for i, n in enumerate(class_names)))
    with open(os.path.join(base, 'labels.txt'), 'w') as f:
        f.write('\n'.join(f"{i}: {n}" for i, n in enumerate(class_names) if i > 0) + '\n')


def write_dataset(datadir: str, name: str = 'toy', num_classes: int = 6, seen: Sequence[int] = (1, 2, 3),
                  unseen: Sequence[int] = (5, 4), image_size: Union[Size, Sequence[Size]] = (40, 56),
                  n_train: int = 4, n_test: int = 2, seed: int = 0, subdirs: Tuple[str, str] = ('train', 'val'),
                  list_prefix: str = '/home/x/SBD/dataset/annotations', list_ext: str = '.png',
                  palette: bool = False, embedding_dim: int = 300, fasttext_scale: float = 1.0,
                  class_names: Optional[Sequence[str]] = None) -> ToyDataset:
    """Write a complete toy benchmark `<datadir>/<name>` and return what was written.

    Args:
        num_classes: K = rows of labels_refined.txt (raw labels 0..K-1; 0 is background).
        seen, unseen: raw ids in file order (unseen defaults to the unsorted (5, 4) on purpose).
        image_size: (H, W) for all images, or a list of sizes used in turn (to exercise the warp).
        list_prefix / list_ext: list entries are `<list_prefix>/<subdir>/<stem><list_ext>`; use
            list_ext='' for Pascal-Context style entries.
        fasttext_scale: norm of the fastText rows (word2vec rows have norm 1), to test joint normalisation.
    """
    root = os.path.join(datadir, name)
    sizes = [tuple(image_size)] if isinstance(image_size[0], int) else [tuple(s) for s in image_size]
    names = list(class_names) if class_names is not None else (
        ['background'] + [f"class{i}" for i in range(1, num_classes)])
    if len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} names, num_classes is {num_classes}")
    rng = np.random.default_rng(seed)
    colours = class_colours(num_classes, seed)
    toy = ToyDataset(datadir=datadir, name=name, root=root, seen=list(seen), unseen=list(unseen),
                     class_names=names, train_entries=[], test_entries=[])
    for split, count, subdir in (('train', n_train, subdirs[0]), ('test', n_test, subdirs[1])):
        entries = toy.train_entries if split == 'train' else toy.test_entries
        for i in range(count):
            stem = f"{2008 + i % 3}_{(0 if split == 'train' else 500000) + i:06d}"
            size = sizes[(len(toy.labels)) % len(sizes)]
            label = make_label(size, num_classes, rng)
            image = make_image(label, colours, rng)
            write_pair(root, subdir, stem, image, label, palette=palette)
            toy.labels[stem], toy.images[stem] = label, image
            entries.append((subdir, stem))
    split_dir = os.path.join(root, 'split')
    write_split_list(os.path.join(split_dir, 'train_list.npy'), toy.train_entries, list_prefix, list_ext)
    write_split_list(os.path.join(split_dir, 'test_list.npy'), toy.test_entries, list_prefix, list_ext)
    np.save(os.path.join(split_dir, 'seen_cls.npy'), np.asarray(seen, dtype=np.int64))
    np.save(os.path.join(split_dir, 'novel_cls.npy'), np.asarray(unseen, dtype=np.int64))
    write_class_files(root, names)
    write_word_vectors(os.path.join(root, 'word_vectors', 'word2vec.pkl'), num_classes, embedding_dim, seed)
    write_word_vectors(os.path.join(root, 'word_vectors', 'fasttext.pkl'), num_classes, embedding_dim, seed + 1,
                       scale=fasttext_scale)
    return toy
