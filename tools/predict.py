"""Segment your own images with a trained model: a checkpoint + its config + images (files or folders, any size,
any format OpenCV reads) -> per image a label PNG, a colour picture and an overlay with a legend, optionally the
share of the image each class covers (docs/predict.md).

    python -m tools.predict --config configs/voc12.yaml --checkpoint trained_models/voc12_ourbest.pth \\
        photos/ street.png --out predictions/
    ... --classes "cat,dog,sofa"               # only these of the model's classes, in this order
    ... --class_names my_classes.txt --word_vectors fasttext.kv word2vec.kv   # classes the model never saw

--out receives `<name>.png` (label ids: the dataset's raw ids, or with --class_names the file's index column;
255 = no class), `colour/<name>.png` (the palette), `overlay/<name>.png` (the prediction on the image, with a
legend), with --shares `shares/<name>.json`, and `classes.json` (every candidate class: id, name, seen / unseen /
new). Images go through the test loader's transform (libs/datasets/loader.py `ImageFiles`: BGR mean
subtraction, warp to IMAGE.SIZE.BASE); the logits are upsampled bilinearly to each image's original size and
decided as `--val --eval_mode full` decides them (docs/method.md §7.6), so on a test image the label PNG equals
full-mode evaluation's.

--class_names FILE (`index<TAB>name` lines, as labels_refined.txt) + --word_vectors: the config's `embedding`
built from the given word vectors, fastText first for fastnvec: a gensim model (KeyedVectors `.kv`, word2vec
`.bin`, or text) per part, looked up by name as tools/build_word_vectors.py does, or our `.pkl` tables whose
row r is the vector of the file's class r. How those classes are scored depends on the method (CaGNet: a new
classifier head trained on generated features; see libs/engine/new_classes.py and docs/predict.md).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional, Sequence, Tuple

if not __package__:  # `python tools/<name>.py`: the repository root on the path, as `python -m tools.<name>` has it
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2
import numpy as np
import torch

from libs.checkpoint import check_method, load_model_weights, read_checkpoint
from libs.config import load_config
from libs.datasets import ImageFiles, collate_test, load_class_splits, read_class_names
from libs.datasets.embeddings import EMBEDDING_PARTS, combine_word_vectors, load_vector_file
from libs.engine.distributed import Processes, select_device
from libs.engine.evaluation import PredictionWriter, upsampled_ids
from libs.engine.methods import get_method
from libs.engine.new_classes import HeadTraining, embedding_predictor
from libs.engine.rng import seed_everything
from libs.io import atomic_write, progress_bar, setup_logging
from models.backbone import feature_size
from models.initialization import init_weights
from tools.build_word_vectors import FORMATS, build_word_vectors, class_name_words, load_model

VOID = 255


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    p.add_argument("--config", required=True, help="the model's config (configs/*.yaml)")
    p.add_argument("--checkpoint", required=True, help="trained model (our .pth or the authors' released ones)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--classes", default=None,
                   help="comma-separated class names: predict only these, in this order (default: every class)")
    p.add_argument("--class_names", default=None, help="index<TAB>name file of classes to score by word vectors")
    p.add_argument("--word_vectors", nargs="+", default=None, metavar="FILE",
                   help="with --class_names: one file per part of the config's embedding (fastnvec: fastText "
                        "then word2vec): gensim models or .pkl tables with one row per --class_names row")
    p.add_argument("--word_vectors_format", choices=FORMATS, default=None,
                   help="format of gensim word-vector files (default: from the extension: .kv, .bin, else text)")
    p.add_argument("--shares", action="store_true", help="also write shares/<name>.json: pixel share per class")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--batch_size", type=int, default=None, help="images per forward (default BATCH_SIZE.TEST)")
    p.add_argument("--calibrate", type=float, default=None, metavar="GAMMA",
                   help="calibrated stacking gamma (default: the config's calibration)")
    p.add_argument("--head_iters", type=int, default=200,
                   help="CaGNet with --class_names: iterations of the new head's training (default 200)")
    p.add_argument("--head_lr", type=float, default=None,
                   help="its learning rate (default: the config's dis_opt lr_transfer, else lr)")
    p.add_argument("--seed", type=int, default=0, help="seed of the head's training (default 0)")
    p.add_argument("--trust_checkpoint", action="store_true",
                   help="also load a checkpoint that needs full unpickling (which can run arbitrary code): only "
                        "for a file from a source you trust")
    args = p.parse_args(argv)
    if args.word_vectors and not args.class_names or args.class_names and not args.word_vectors:
        p.error("--class_names and --word_vectors go together")
    if args.head_iters < 1:
        p.error(f"--head_iters must be at least 1, got {args.head_iters}")
    return args


def collect_images(inputs: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(image files, skipped files): named files must be images OpenCV reads; in a folder (not recursive) files
    OpenCV has no reader for are skipped. Two inputs with the same name would write the same outputs: an
    error."""
    files, skipped = [], []
    for item in inputs:
        if os.path.isdir(item):
            for name in sorted(os.listdir(item)):
                path = os.path.join(item, name)
                if os.path.isfile(path):
                    (files if cv2.haveImageReader(path) else skipped).append(path)
        elif os.path.isfile(item):
            if not cv2.haveImageReader(item):
                raise ValueError(f"{item}: not an image OpenCV can read")
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    if not files:
        raise ValueError(f"no image OpenCV can read in {', '.join(inputs)}")
    seen = {}
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in seen:
            raise ValueError(f"{seen[stem]} and {path} would both write {stem}.png; rename one or run them "
                             f"separately")
        seen[stem] = path
    return files, skipped


def _key(name: str) -> str:
    """A class name compared by its words, lower case (`potted_plant` = `Potted plant`)."""
    return " ".join(w.lower() for w in class_name_words(name))


def choose(names: Sequence[str], wanted: Optional[str], what: str) -> List[int]:
    """Indices into `names` of the comma-separated `wanted` names, in their order (all when None)."""
    if wanted is None:
        return list(range(len(names)))
    index = {_key(n): i for i, n in enumerate(names)}
    chosen = []
    for name in (w.strip() for w in wanted.split(",")):
        if not name:
            continue
        if _key(name) not in index:
            raise ValueError(f"--classes: {name!r} is not one of {what}: {', '.join(names)}")
        if index[_key(name)] in chosen:
            raise ValueError(f"--classes: {name!r} is listed twice")
        chosen.append(index[_key(name)])
    if not chosen:
        raise ValueError("--classes: no class name given")
    return chosen


def word_vector_table(names: Sequence[str], rows: Sequence[int], files: Sequence[str], embedding: str,
                      without_normal: bool, fmt: Optional[str]) -> np.ndarray:
    """The config's class embedding (len(rows), E) of names[rows] from the given word-vector files."""
    parts = EMBEDDING_PARTS[embedding]
    if len(files) != len(parts):
        raise ValueError(f"--word_vectors: the config's embedding {embedding!r} is {' + '.join(parts)}; pass "
                         f"{len(parts)} file(s) in that order, got {len(files)}")
    tables = []
    for part, path in zip(parts, files):
        if path.endswith(".pkl"):
            table = load_vector_file(path)
            if table.shape[0] != len(names):
                raise ValueError(f"{path} has {table.shape[0]} rows but --class_names names {len(names)} classes; "
                                 f"row r must be the {part} vector of class r")
            tables.append(table[list(rows)])
        else:
            table, missing = build_word_vectors([names[r] for r in rows], load_model(path, fmt))
            for _, name, words in missing:
                print(f"warning: {path}: class {name!r}: unknown word(s) {words}", file=sys.stderr)
            tables.append(table)
    return combine_word_vectors(tables, without_normal)


class Candidates:
    """The classes an image is segmented into: the predictor, the label id of each of its output channels
    (`to_raw`, then VOID for anything else), the channels and seen mask a decision uses, and the legend."""

    def __init__(self, predictor, to_raw, names_by_id, seen_ids, unseen_ids, channels=None, seen=None,
                 num_classes=None, num_seen=None, note=""):
        self.predictor, self.names_by_id = predictor, list(names_by_id)
        self.to_raw = torch.tensor(list(to_raw) + [VOID], dtype=torch.long)
        self.seen_ids, self.unseen_ids = list(seen_ids), list(unseen_ids)
        self.channels, self.seen = channels, seen
        self.num_classes, self.num_seen = num_classes, num_seen
        self.note = note

    def logits(self, image_logits: torch.Tensor, calibration: float):
        """One image's logits (C, h, w) -> (the channels to decide over, their seen mask)."""
        if self.channels is None:         # the model's own classes: exactly the evaluation's decision
            scores = image_logits[:self.num_classes] if calibration else image_logits
            return scores, torch.arange(scores.shape[0]) < self.num_seen
        return image_logits[self.channels], self.seen

    def groups(self):
        ids = self.to_raw[:-1].tolist()
        return [{"id": i, "name": self.names_by_id[i],
                 "group": "seen" if i in self.seen_ids else "unseen" if i in self.unseen_ids else "new"}
                for i in ids]


def candidates_of(args, cfg, model, splits) -> Candidates:
    if args.class_names is None:
        test_names, raw = splits.test_names, np.array(splits.test_ids_to_raw)
        if args.classes is None:
            return Candidates(model, raw, splits.raw_names, splits.seen, splits.unseen,
                              num_classes=splits.num_classes, num_seen=splits.num_seen,
                              note="the model's classes, decided as --val decides")
        chosen = choose(test_names, args.classes, "the model's classes")
        return Candidates(model, raw[chosen], splits.raw_names, splits.seen, splits.unseen,
                          channels=torch.tensor(chosen), seen=torch.tensor(chosen) < splits.num_seen,
                          note=f"the model's classes {', '.join(test_names[c] for c in chosen)}")
    if cfg["method"] != "cagnet":
        raise ValueError(f"--class_names: new classes by word embeddings are implemented for method cagnet (a "
                         f"generated-feature classifier head), not {cfg['method']}; use the model's own classes")
    names = read_class_names(args.class_names)
    rows = choose(names, args.classes, f"the classes of {args.class_names}")
    table = word_vector_table(names, rows, args.word_vectors, cfg["embedding"], cfg["emb_without_normal"],
                              args.word_vectors_format)
    own = {_key(n): i for i, n in enumerate(splits.test_names)}
    known = [own.get(_key(names[r])) for r in rows]
    dis_opt = cfg["dis_opt"]
    lr = args.head_lr if args.head_lr is not None else dis_opt.value("lr_transfer", dis_opt.value("lr"))
    pixels = cfg.value("BATCH_SIZE.TRAIN") * feature_size(cfg.value("IMAGE.SIZE.TRAIN")) ** 2
    settings = HeadTraining(iterations=args.head_iters, pixels=pixels, optimizer=dis_opt["OPTIMIZER"], lr=lr,
                            weight_decay=dis_opt["weight_decay"], seed=args.seed)
    predictor, note = embedding_predictor(model, torch.from_numpy(table), known, settings,
                                          progress_bar("new classifier head"))
    seen_ids = [r for r, k in zip(rows, known) if k is not None and k < splits.num_seen]
    unseen_ids = [r for r, k in zip(rows, known) if k is not None and k >= splits.num_seen]
    return Candidates(predictor, rows, names, seen_ids, unseen_ids, channels=torch.arange(len(rows)),
                      seen=torch.tensor([k is not None and k < splits.num_seen for k in known]),
                      note=f"{len(rows)} classes of {args.class_names}: {note}")


def shares(raw: np.ndarray, candidates: Candidates) -> dict:
    """Fraction of the image's pixels per candidate class (candidate order), plus 'no class' when any."""
    values, counts = np.unique(raw, return_counts=True)
    count = dict(zip(values.tolist(), counts.tolist()))
    out = {candidates.names_by_id[i]: count.get(i, 0) / raw.size for i in candidates.to_raw[:-1].tolist()}
    if VOID in count:
        out["no class"] = count[VOID] / raw.size
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    files, skipped = collect_images(args.inputs)
    if skipped:
        print(f"skipped {len(skipped)} file(s) OpenCV cannot read: {', '.join(skipped)}", file=sys.stderr)
    cfg = load_config(args.config)
    splits = load_class_splits(cfg["datadir"], cfg["dataset"], num_unseen=cfg["num_unseen"],
                               out_dim_cls=cfg.value("dis.out_dim_cls"))
    seed_everything(args.seed)
    model = get_method(cfg["method"]).build_model(cfg, splits)
    init_weights(model, cfg["init"])
    setup_logging(None)     # the checkpoint's sha256 and warnings reach the console
    checkpoint = read_checkpoint(args.checkpoint, trust=args.trust_checkpoint)
    check_method(checkpoint, cfg["method"], args.checkpoint, "tools.predict")
    print(load_model_weights(model, checkpoint, args.checkpoint, purpose="evaluate").summary())
    device = select_device(args.device, Processes())
    model.to(device).eval()
    calibration = cfg["calibration"] if args.calibrate is None else args.calibrate

    candidates = candidates_of(args, cfg, model, splits)
    mean = cfg["IMAGE"]["MEAN"]
    data = ImageFiles(files, mean_bgr=(mean["B"], mean["G"], mean["R"]), base_size=cfg.value("IMAGE.SIZE.BASE"),
                      warp=cfg["WARP_IMAGE"])
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size or cfg.value("BATCH_SIZE.TEST"),
                                         collate_fn=collate_test)
    writer = PredictionWriter(args.out, candidates.to_raw, candidates.names_by_id, candidates.seen_ids,
                              candidates.unseen_ids, colour=True, other_title="new classes (word vectors)")
    with torch.no_grad():
        for images, _, stems, originals in progress_bar("predict")(loader):
            logits = candidates.predictor.predict(images.to(device))
            for image_logits, stem, original in zip(logits, stems, originals):
                scores, seen = candidates.logits(image_logits, calibration)
                raw = writer.write(stem, upsampled_ids(scores, original.size, seen, calibration), original)
                if args.shares:
                    record = {"image": original.image_path, "size": list(original.size),
                              "shares": shares(raw, candidates)}
                    atomic_write(os.path.join(args.out, "shares", f"{stem}.json"),
                                 lambda f, r=record: json.dump(r, f, indent=2), binary=False)
    summary = {"checkpoint": args.checkpoint, "config": args.config, "how": candidates.note,
               "calibration": calibration, "classes": candidates.groups()}
    atomic_write(os.path.join(args.out, "classes.json"), lambda f: json.dump(summary, f, indent=2), binary=False)
    print(f"wrote {len(files)} prediction(s) to {args.out} ({candidates.note})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
