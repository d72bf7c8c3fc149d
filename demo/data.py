"""A small synthetic zero-shot segmentation benchmark in the real on-disk layout (docs/method.md §6).

The demo uses the 20 PASCAL VOC class names, VOC's seen/unseen split (seen raw ids 1..15, unseen 16..20)
and VOC's shipped word vectors byte-for-byte, so the class embeddings the method reads are the real ones.
What is synthetic is the pictures: 64x64 scenes with a textured background (raw label 0, ignored by the
method) and 2-4 objects whose look is a fixed function of their class embedding.

Why the appearance depends on the embedding the way it does: a zero-shot method can only transfer what
the seen classes' embeddings can express. So each class's appearance parameters (colour, stripe texture,
grain, size, elongation, squareness) are a smooth function of the part of its 600-d `fastnvec` embedding
that lies in the span of the 15 seen classes' embeddings: project, map linearly to a handful of codes,
squash to valid ranges. A linear map fitted on the seen classes alone then predicts every unseen class's
codes exactly (tests check this). Using the full 600-d vector instead made unseen classes unpredictable
(demo-lessons.md: U-mIoU 0.01).

Scenes follow "contexts" (animals on grass, vehicles on roads, boats on water, furniture indoors, ...)
so that class co-occurrence and background carry information for the contextual module.

Layout written under `out` (a folder such as `dataset/demo`):
    images/{train,val}/<stem>.jpg         BGR, cv2.imwrite, JPEG quality 95
    annotations/{train,val}/<stem>.png    8-bit grey PNG: 0 background, 1..20 classes, 255 void band
    split/{seen_cls,novel_cls}.npy        int64 raw ids
    split/{train,test}_list.npy           numpy unicode arrays of annotation paths
    labels.txt, labels_refined.txt        copied from VOC
    word_vectors/{word2vec,fasttext}.pkl  copied from VOC byte-exactly
    classes.json                          contexts, appearance parameters, pixel counts, generation record
    README.md                             what this is and how it was generated
"""
import json
import logging
import os
import shutil
from pathlib import Path

import cv2
import numpy as np

from libs.datasets import load_word_embeddings, read_class_names
from libs.datasets.splits import VOID_LABEL

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
# The shipped VOC files (class names and word vectors).
VOC_DIR_CANDIDATES = (REPO_ROOT / 'dataset' / 'voc12',)
VOC_FILES = ('labels.txt', 'labels_refined.txt', 'word_vectors/word2vec.pkl', 'word_vectors/fasttext.pkl')

SEEN_IDS = tuple(range(1, 16))
UNSEEN_IDS = tuple(range(16, 21))
CLASS_IDS = SEEN_IDS + UNSEEN_IDS
SUBDIRS = {'train': 'train', 'test': 'val'}
GENERATOR_VERSION = 1

# (name, low, high): ranges the squashed appearance codes are mapped to. Lengths are for a 64-px image and
# scale with the image size. The stripe angle stays in [0, 90] degrees because horizontal flips (a training
# augmentation) turn an angle t into 180 - t, which would make t and 180 - t indistinguishable.
APPEARANCE_PARAMS = (
    ('blue', 25.0, 230.0),
    ('green', 25.0, 230.0),
    ('red', 25.0, 230.0),
    ('stripe_contrast', 0.0, 0.5),
    ('stripe_period', 4.0, 14.0),
    ('stripe_angle', 0.0, 90.0),
    ('grain', 0.0, 30.0),
    ('radius', 0.12, 0.21),
    ('elongation', 1.0, 2.6),
    ('squareness', 1.3, 5.0),
)
# 0 keeps the embedding geometry, 1 whitens the seen classes fully; 0.5 spreads close seen classes apart
# while keeping similar classes (cow/sheep, bus/train) similar.
WHITEN_POWER = 0.5
SQUASH_GAIN = 1.5
N_CANDIDATE_MAPS = 200

# Scene contexts: background scene type and class weights (raw ids). Every class is in at least one.
CONTEXTS = (
    ('pasture', 'grass', {10: 3, 13: 3, 17: 3, 12: 2, 15: 2, 3: 1}),
    ('garden', 'grass', {8: 2, 12: 2, 15: 2, 2: 1, 16: 2, 3: 1}),
    ('street', 'road', {7: 3, 6: 2, 2: 2, 14: 2, 15: 3}),
    ('station', 'road', {19: 3, 15: 2, 6: 1, 7: 1}),
    ('airspace', 'sky', {1: 3, 3: 2}),
    ('harbour', 'water', {4: 3, 3: 1, 15: 1}),
    ('living_room', 'indoor', {18: 3, 20: 2, 16: 2, 9: 2, 8: 1, 12: 1, 15: 2, 5: 1}),
    ('dining_room', 'indoor', {11: 3, 9: 3, 5: 2, 16: 1, 15: 2}),
)
SCENE_TYPES = ('grass', 'road', 'sky', 'water', 'indoor')


# ----------------------------------------------------------------------------------------------------------
# Class embeddings and appearance

def find_voc_dir(voc_dir=None):
    """The folder holding VOC's labels and word vectors: `voc_dir` if given, else the first candidate found."""
    candidates = [Path(voc_dir)] if voc_dir is not None else list(VOC_DIR_CANDIDATES)
    for cand in candidates:
        if all((cand / f).is_file() for f in VOC_FILES):
            return cand
    raise FileNotFoundError(
        'demo data: no VOC folder with ' + ', '.join(VOC_FILES) + ' found; looked in '
        + ', '.join(str(c) for c in candidates))


def load_fastnvec(voc_dir):
    """[fastText ‖ word2vec] per raw label, each 600-d row L2-normalised as a whole (docs/method.md §6.5), in
    float64 so that the appearance table does not depend on float32 rounding. (K, 600)."""
    voc_dir = Path(voc_dir)
    return load_word_embeddings(str(voc_dir.parent), voc_dir.name, 'fastnvec', dtype=np.float64)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def appearance_table(embeddings, seen_ids=SEEN_IDS, class_ids=CLASS_IDS, appearance_seed=0):
    """Appearance parameters of every class as a fixed function of its embedding's seen-span part.

    embeddings: (K, E) rows = raw ids. Returns a dict of arrays indexed by raw id (rows of unused ids are 0):
      'code'   (K, P) linear in the embedding: code = embedding @ linear_map (only the seen-span part matters)
      'unit'   (K, P) in (0, 1): sigmoid(gain * (code - offset))
      'params' (K, P) unit mapped to the ranges of APPEARANCE_PARAMS
      'linear_map' (E, P), 'offset' (P,), 'gain', 'min_distance', 'closest_pair', 'names' (param names).
    The linear map is the best of N_CANDIDATE_MAPS seeded random ones by the smallest pairwise distance
    between the classes' 'unit' vectors, so that classes are as distinct as the embeddings allow.
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    seen = np.asarray(seen_ids)
    ids = np.asarray(class_ids)
    n_params = len(APPEARANCE_PARAMS)
    # Orthonormal basis of the seen span: coordinates of the projection onto it (linear in the embedding).
    _, sv, basis = np.linalg.svd(emb[seen], full_matrices=False)
    basis = basis[sv > 1e-9 * sv[0]]
    coords_seen = emb[seen] @ basis.T
    _, s2, v2t = np.linalg.svd(coords_seen, full_matrices=False)
    whiten = basis.T @ v2t.T @ np.diag(s2 ** -WHITEN_POWER)          # (E, r)
    feats = emb[ids] @ whiten                                          # (n, r)
    best = None
    for trial in range(N_CANDIDATE_MAPS):
        rot = np.random.default_rng([appearance_seed, trial]).standard_normal((feats.shape[1], n_params))
        code = feats @ rot
        scale = code.std(axis=0)
        code = code / scale
        offset = code.mean(axis=0)
        unit = _sigmoid(SQUASH_GAIN * (code - offset))
        dist = _pairwise(unit)
        if best is None or dist.min() > best[0]:
            best = (dist.min(), whiten @ rot / scale, offset, dist)
    min_dist, linear_map, offset, dist = best
    i, j = np.unravel_index(np.argmin(dist), dist.shape)
    code_all = np.zeros((emb.shape[0], n_params))
    code_all[ids] = emb[ids] @ linear_map
    unit_all = np.zeros_like(code_all)
    unit_all[ids] = _sigmoid(SQUASH_GAIN * (code_all[ids] - offset))
    lo = np.array([p[1] for p in APPEARANCE_PARAMS])
    hi = np.array([p[2] for p in APPEARANCE_PARAMS])
    params_all = np.zeros_like(code_all)
    params_all[ids] = lo + (hi - lo) * unit_all[ids]
    return {'code': code_all, 'unit': unit_all, 'params': params_all, 'linear_map': linear_map,
            'offset': offset, 'gain': SQUASH_GAIN, 'min_distance': float(min_dist),
            'closest_pair': (int(ids[i]), int(ids[j])), 'names': [p[0] for p in APPEARANCE_PARAMS]}


def _pairwise(unit):
    """Euclidean distances between rows, with the diagonal set to +inf."""
    dist = np.sqrt(((unit[:, None, :] - unit[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(dist, np.inf)
    return dist


# ----------------------------------------------------------------------------------------------------------
# Rendering

def _smooth_noise(rng, size, cells):
    """Zero-mean, unit-ish smooth noise (size, size) from a (cells+1)^2 grid upsampled bicubically."""
    grid = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def _render_background(rng, scene, size, yy, xx):
    """A textured background (size, size, 3) float32 BGR for one scene type."""
    img = np.empty((size, size, 3), np.float32)
    fine = rng.standard_normal((size, size)).astype(np.float32)
    if scene == 'grass':
        base = np.array([45, 150, 70], np.float32) + rng.uniform(-15, 15, 3).astype(np.float32)
        shade = 18 * _smooth_noise(rng, size, 4) + 12 * fine
        img[:] = base + shade[..., None] * np.array([0.6, 1.0, 0.7], np.float32)
    elif scene == 'sky':
        top = np.array([225, 160, 100], np.float32) + rng.uniform(-15, 15, 3).astype(np.float32)
        bottom = np.array([250, 225, 200], np.float32)
        t = (yy / (size - 1))[..., None]
        img[:] = top * (1 - t) + bottom * t
        clouds = np.clip(_smooth_noise(rng, size, 3) - 0.4, 0, None)[..., None]
        img += 60 * clouds + 3 * fine[..., None]
    elif scene == 'water':
        base = np.array([150, 95, 35], np.float32) + rng.uniform(-15, 15, 3).astype(np.float32)
        phase = rng.uniform(0, 2 * np.pi)
        waves = np.sin(0.9 * yy + 1.5 * np.sin(0.25 * xx + phase))
        img[:] = base + (18 * waves + 5 * fine)[..., None]
    elif scene == 'road':
        grey = rng.uniform(85, 115)
        img[:] = grey + (8 * fine + 6 * _smooth_noise(rng, size, 4))[..., None]
        horizon = int(rng.uniform(0.2, 0.35) * size)
        img[:horizon] = np.array([200, 185, 170], np.float32) + 4 * fine[:horizon, :, None]
        lane_y = int(rng.uniform(0.6, 0.85) * size)
        dash = ((xx[0] + rng.integers(0, 10)) % 10) < 6
        thick = max(1, size // 32)
        img[lane_y:lane_y + thick, dash] = np.array([235, 240, 245], np.float32)
    elif scene == 'indoor':
        walls = ((170, 200, 220), (190, 190, 185), (165, 195, 170))
        wall = np.array(walls[rng.integers(len(walls))], np.float32)
        floor = np.array([60, 95, 135], np.float32) + rng.uniform(-10, 10, 3).astype(np.float32)
        horizon = int(rng.uniform(0.5, 0.7) * size)
        img[:] = wall + 4 * fine[..., None]
        planks = ((yy[horizon:] - horizon) % max(3, size // 10)) == 0
        img[horizon:] = floor + 6 * fine[horizon:, :, None] - 25 * planks[..., None]
    else:
        raise ValueError(f'demo data: unknown scene type {scene!r}; expected one of {SCENE_TYPES}')
    return img


def _object_mask(params, size, yy, xx, cx, cy, rotation, scale_jitter):
    """Superellipse mask (size, size) bool of one object instance."""
    radius = params['radius'] * size * scale_jitter
    elong = params['elongation']
    semi_a, semi_b = radius * np.sqrt(elong), radius / np.sqrt(elong)
    cos_r, sin_r = np.cos(rotation), np.sin(rotation)
    dx, dy = xx - cx, yy - cy
    u = (dx * cos_r + dy * sin_r) / semi_a
    v = (-dx * sin_r + dy * cos_r) / semi_b
    p = params['squareness']
    return (np.abs(u) ** p + np.abs(v) ** p) <= 1.0


def _object_texture(rng, params, size, yy, xx):
    """The class texture (size, size, 3) float32 BGR with per-instance jitter (colour, phase, angle, period)."""
    colour = np.array([params['blue'], params['green'], params['red']], np.float32)
    colour = colour + rng.uniform(-8, 8, 3).astype(np.float32)
    angle = np.deg2rad(params['stripe_angle'] + rng.uniform(-6, 6))
    period = params['stripe_period'] * size / 64.0 * rng.uniform(0.92, 1.08)
    wave = np.sin(2 * np.pi / period * (xx * np.cos(angle) + yy * np.sin(angle)) + rng.uniform(0, 2 * np.pi))
    lum = 1.0 + params['stripe_contrast'] * wave
    grain = params['grain'] * rng.standard_normal((size, size)).astype(np.float32)
    return colour * lum[..., None] + grain[..., None]


def _void_band(instances):
    """Void mask: background pixels touching an object, and object pixels touching an object painted above.

    instances: (H, W) int, 0 = background, k = k-th painted object (higher = on top). 4-neighbourhood.
    """
    void = np.zeros(instances.shape, bool)
    pad = np.pad(instances, 1, mode='edge')
    h, w = instances.shape
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        nb = pad[dy:dy + h, dx:dx + w]
        void |= nb > instances
    return void


def _scene_plan(rng, anchor, contexts):
    """Pick a context containing `anchor` and the classes of the 2-4 objects (anchor last, painted on top)."""
    options = [c for c in contexts if anchor in c[2]]
    weights = np.array([c[2][anchor] for c in options], np.float64)
    name, scene, members = options[rng.choice(len(options), p=weights / weights.sum())]
    ids = np.array(sorted(members))
    w = np.array([members[i] for i in ids], np.float64)
    n_obj = int(rng.integers(2, 5))
    others = [int(x) for x in rng.choice(ids, size=n_obj - 1, p=w / w.sum())]
    return name, scene, others + [int(anchor)]


def render_image(rng, anchor, table, size, contexts=CONTEXTS):
    """One scene: (image (size, size, 3) uint8 BGR, label (size, size) uint8, context name)."""
    names = table['names']
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    context, scene, classes = _scene_plan(rng, anchor, contexts)
    img = _render_background(rng, scene, size, yy, xx)
    instances = np.zeros((size, size), np.int32)
    label = np.zeros((size, size), np.uint8)
    for k, cls in enumerate(classes, start=1):
        params = dict(zip(names, table['params'][cls]))
        rotation = rng.uniform(0, np.pi)
        jitter = rng.uniform(0.85, 1.15)
        reach = params['radius'] * size * jitter * np.sqrt(params['elongation'])
        lo, hi = min(reach * 0.6, size / 2), max(size - reach * 0.6, size / 2)
        # Spread objects out: of a few candidate centres, keep the one covering the fewest painted pixels.
        best = None
        for _ in range(4):
            cx, cy = rng.uniform(lo, hi), rng.uniform(lo, hi)
            mask = _object_mask(params, size, yy, xx, cx, cy, rotation, jitter)
            overlap = int((instances[mask] > 0).sum())
            if best is None or overlap < best[0]:
                best = (overlap, mask)
            if overlap == 0:
                break
        mask = best[1]
        texture = _object_texture(rng, params, size, yy, xx)
        img[mask] = texture[mask]
        instances[mask] = k
        label[mask] = cls
    label[_void_band(instances)] = VOID_LABEL
    img *= rng.uniform(0.92, 1.08)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), label, context


# ----------------------------------------------------------------------------------------------------------
# The benchmark on disk

def _anchor(seed, split_code, index):
    """Class of the image's top object: every block of 20 images shows each class once, in seeded order."""
    block, pos = divmod(index, len(CLASS_IDS))
    order = np.random.default_rng([seed, split_code, 1_000_000 + block]).permutation(len(CLASS_IDS))
    return CLASS_IDS[order[pos]]


def generation_record(seed, n_train, n_test, size, appearance_seed):
    return {'version': GENERATOR_VERSION, 'seed': int(seed), 'n_train': int(n_train), 'n_test': int(n_test),
            'size': int(size), 'appearance_seed': int(appearance_seed)}


def is_complete(out, seed=0, n_train=1200, n_test=200, size=64, appearance_seed=0):
    """True when `out` holds a finished demo generated with exactly these parameters."""
    out = Path(out)
    info = out / 'classes.json'
    needed = [info, out / 'README.md'] + [out / 'split' / f'{n}.npy' for n in
                                          ('seen_cls', 'novel_cls', 'train_list', 'test_list')]
    needed += [out / f for f in VOC_FILES]
    if not all(p.is_file() for p in needed):
        return False
    try:
        with open(info, encoding='utf-8') as fh:
            record = json.load(fh).get('generation')
    except (OSError, ValueError):
        return False
    if record != generation_record(seed, n_train, n_test, size, appearance_seed):
        return False
    for list_name in ('train_list', 'test_list'):
        for entry in np.load(out / 'split' / f'{list_name}.npy'):
            sub, fname = str(entry).split('/')[-2:]
            stem = fname[:-4] if fname.endswith('.png') else fname
            if not (out / 'images' / sub / f'{stem}.jpg').is_file() or \
                    not (out / 'annotations' / sub / f'{stem}.png').is_file():
                return False
    return True


def existing_record(out):
    """The generation record of an existing demo folder, or None."""
    try:
        with open(Path(out) / 'classes.json', encoding='utf-8') as fh:
            return json.load(fh).get('generation')
    except (OSError, ValueError):
        return None


def generate_demo(out, seed=0, n_train=1200, n_test=200, size=64, appearance_seed=0, voc_dir=None,
                  progress=False):
    """Write the demo benchmark to `out`, replacing what is there. Deterministic: same arguments, same bytes.

    Written into a sibling temporary folder first and renamed at the end, so `out` is never half-written.
    Returns a summary dict (counts, pixel counts per class and split, min appearance distance, ...).
    """
    for name, value, low in (('n_train', n_train, len(CLASS_IDS)), ('n_test', n_test, len(CLASS_IDS)),
                             ('size', size, 32)):
        if int(value) != value or value < low:
            raise ValueError(f'demo data: {name} must be an integer >= {low} (one image per class at least'
                             f' / room for objects), got {value!r}')
    n_train, n_test, size = int(n_train), int(n_test), int(size)
    voc = find_voc_dir(voc_dir)
    names = read_class_names(voc / 'labels_refined.txt')
    if len(names) != 21:
        raise ValueError(f'{voc / "labels_refined.txt"}: expected the 21 VOC rows, got {len(names)}')
    emb = load_fastnvec(voc)
    if emb.shape[0] != len(names):
        raise ValueError(f'{voc / "word_vectors"}: {emb.shape[0]} rows, expected {len(names)} (one per label)')
    table = appearance_table(emb, SEEN_IDS, CLASS_IDS, appearance_seed)

    out = Path(out)
    tmp = out.parent / f'.{out.name}.tmp-{os.getpid()}'
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        for f in VOC_FILES:
            (tmp / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(voc / f, tmp / f)
        (tmp / 'split').mkdir(parents=True, exist_ok=True)
        np.save(tmp / 'split' / 'seen_cls.npy', np.array(SEEN_IDS, np.int64))
        np.save(tmp / 'split' / 'novel_cls.npy', np.array(UNSEEN_IDS, np.int64))
        pixel_counts, context_counts = {}, {}
        total = n_train + n_test
        bar = _progress(total, progress)
        start = 0
        for split_code, (split, count) in enumerate((('train', n_train), ('test', n_test))):
            sub = SUBDIRS[split]
            (tmp / 'images' / sub).mkdir(parents=True, exist_ok=True)
            (tmp / 'annotations' / sub).mkdir(parents=True, exist_ok=True)
            hist = np.zeros(256, np.int64)
            contexts = {}
            entries = []
            for i in range(count):
                stem = f'demo_{start + i:06d}'
                rng = np.random.default_rng([seed, split_code, i])
                img, label, context = render_image(rng, _anchor(seed, split_code, i), table, size)
                _write(tmp / 'images' / sub / f'{stem}.jpg', img, [cv2.IMWRITE_JPEG_QUALITY, 95])
                _write(tmp / 'annotations' / sub / f'{stem}.png', label, [cv2.IMWRITE_PNG_COMPRESSION, 3])
                hist += np.bincount(label.ravel(), minlength=256)
                contexts[context] = contexts.get(context, 0) + 1
                entries.append(f'dataset/{out.name}/annotations/{sub}/{stem}.png')
                bar.update(1)
            start += count
            np.save(tmp / 'split' / f'{split}_list.npy', np.array(entries))
            pixel_counts[sub] = {names[c]: int(hist[c]) for c in CLASS_IDS}
            pixel_counts[sub]['background'] = int(hist[0])
            pixel_counts[sub]['void'] = int(hist[VOID_LABEL])
            context_counts[sub] = dict(sorted(contexts.items()))
        bar.close()
        record = generation_record(seed, n_train, n_test, size, appearance_seed)
        summary = {
            'generation': record,
            'pixel_counts': pixel_counts,
            'context_counts': context_counts,
            'min_appearance_distance': table['min_distance'],
            'closest_pair': [names[c] for c in table['closest_pair']],
        }
        _write_classes_json(tmp / 'classes.json', names, table, summary)
        (tmp / 'README.md').write_text(_readme(out, names, table, summary), encoding='utf-8')
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return summary


def _write(path, array, flags):
    if not cv2.imwrite(str(path), array, flags):
        raise OSError(f'demo data: could not write {path}')


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(total, enabled):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, desc='demo data', unit='img')


def _write_classes_json(path, names, table, summary):
    classes = []
    for c in CLASS_IDS:
        classes.append({
            'id': c,
            'name': names[c],
            'split': 'seen' if c in SEEN_IDS else 'unseen',
            'contexts': [ctx[0] for ctx in CONTEXTS if c in ctx[2]],
            'appearance': {n: round(float(v), 4) for n, v in zip(table['names'], table['params'][c])},
            'appearance_unit': [round(float(v), 6) for v in table['unit'][c]],
            'appearance_code': [round(float(v), 6) for v in table['code'][c]],
        })
    doc = {
        'description': 'Synthetic zero-shot demo: per-class appearance = fixed function of the seen-span part '
                       'of the class fastnvec embedding; see README.md.',
        'generation': summary['generation'],
        'appearance_params': [{'name': n, 'low': lo, 'high': hi} for n, lo, hi in APPEARANCE_PARAMS],
        'appearance_map': {'whiten_power': WHITEN_POWER, 'gain': SQUASH_GAIN,
                           'offset': [round(float(v), 6) for v in table['offset']]},
        'min_appearance_distance': round(summary['min_appearance_distance'], 6),
        'closest_pair': summary['closest_pair'],
        'contexts': [{'name': n, 'scene': s, 'classes': {names[c]: w for c, w in m.items()}}
                     for n, s, m in CONTEXTS],
        'classes': classes,
        'pixel_counts': summary['pixel_counts'],
        'context_counts': summary['context_counts'],
    }
    with open(path, 'w', encoding='utf-8') as fh:
        json.dump(doc, fh, indent=1, sort_keys=False)
        fh.write('\n')


def _readme(out, names, table, summary):
    g = summary['generation']
    lines = [
        f'# `{out.name}`: a synthetic zero-shot segmentation benchmark (generated, not committed)',
        '',
        f'Generated by `python -m demo.make_data --out dataset/{out.name} --seed {g["seed"]} '
        f'--n_train {g["n_train"]} --n_test {g["n_test"]} --size {g["size"]}` '
        f'(generator version {g["version"]}, appearance seed {g["appearance_seed"]}). '
        'The same arguments give byte-identical files.',
        '',
        f'- {g["n_train"]} training images (`images/train`, `annotations/train`) and {g["n_test"]} test images '
        f'(`images/val`, `annotations/val`), {g["size"]}x{g["size"]} px, in the PASCAL VOC layout the loader reads.',
        '- Classes: the 20 VOC classes with VOC\'s split: seen raw ids 1..15, unseen 16..20 (potted_plant, sheep, '
        'sofa, train, tv). Annotations: 0 = background (ignored by the method), 1..20 classes, 255 = a one-pixel '
        'void band around objects. Unseen classes also appear in training images (the loader ignores them there).',
        '- `labels.txt`, `labels_refined.txt` and `word_vectors/*.pkl` are VOC\'s files, byte-for-byte.',
        '- Each class\'s appearance (colour, stripe contrast/period/angle, grain, size, elongation, squareness) is '
        'a fixed function of the part of its 600-d fastnvec embedding inside the span of the 15 seen classes\' '
        'embeddings: a linear map of that part, squashed by a sigmoid into valid ranges. So the unseen classes\' '
        'appearance is predictable from the seen classes through the embeddings, as the method assumes.',
        '- Scenes follow contexts (background type and typical classes): '
        + '; '.join(f'{n} ({s}): ' + ', '.join(names[c] for c in m) for n, s, m in CONTEXTS) + '.',
        f'- Smallest distance between two classes\' appearance vectors (unit cube, {len(APPEARANCE_PARAMS)} dims): '
        f'{summary["min_appearance_distance"]:.3f} ({" / ".join(summary["closest_pair"])}).',
        '',
        '`classes.json` lists the contexts, every class\'s appearance parameters and the pixel counts below.',
        '',
        '| raw id | class | split | train pixels | test pixels |',
        '|---|---|---|---|---|',
    ]
    pc = summary['pixel_counts']
    for c in CLASS_IDS:
        split = 'seen' if c in SEEN_IDS else 'unseen'
        lines.append(f'| {c} | {names[c]} | {split} | {pc["train"][names[c]]} | {pc["val"][names[c]]} |')
    lines.append('')
    return '\n'.join(lines)
