"""Mean ± standard deviation, min and max of every score over runs (e.g. seeds) of the same method, from their
`--val` JSONs; GAN training varies from seed to seed, so one run's number says little.

    python -m tools.summarize_runs Results/voc12/seed*/results_val_voc12_ourbest.json
    python -m tools.summarize_runs Results/voc12/seed*/results_val_models_transfer_00005000.json
    python -m tools.summarize_runs demo_output/seeds/seed*/scores_mixed.json --markdown summary.md --classes

Runs are grouped by (method, dataset, eval_mode, calibration), one table per group; `--strict` refuses a mix
instead. A group whose runs name different configs is reported (runs of one config are what a mean is for).
The standard deviation is the sample one (n - 1); a score that is null (NaN) in a run is left out of that
score's statistics and `n` says how many runs it has.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

if not __package__:  # `python tools/<name>.py`: the repository root on the path, as `python -m tools.<name>` has it
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from libs.io import atomic_write
from libs.metrics import SCORE_KEYS
from tools import run_cli

GROUP_KEYS = ("method", "dataset", "eval_mode", "calibration")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="--val results JSONs (train.py --results_json)")
    p.add_argument("--markdown", default=None, help="also write the tables as Markdown to this file")
    p.add_argument("--json", default=None, help="also write the statistics as JSON to this file")
    p.add_argument("--classes", action="store_true", help="also summarise each class's IoU")
    p.add_argument("--strict", action="store_true",
                   help="refuse runs of different methods / datasets / eval modes / calibrations instead of grouping")
    return p.parse_args(argv)


def load_run(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such results file")
    try:
        with open(path) as handle:
            run = json.load(handle)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not JSON: {err}") from err
    if not isinstance(run, dict) or not any(key in run for key in SCORE_KEYS):
        raise ValueError(f"{path} holds no scores (expected a --val results JSON with hIoU, mIoU, ...)")
    return run


def group_of(run: dict) -> tuple:
    # JSONs written before these keys existed were CaGNet's feature-mode evaluations.
    defaults = {"method": "cagnet", "dataset": "?", "eval_mode": "feature", "calibration": 0.0}
    return tuple(run.get(key, defaults[key]) for key in GROUP_KEYS)


def statistics(values: Sequence[Optional[float]]) -> dict:
    """n, mean, std (sample, None below 2 runs), min, max of the non-null values (all None when there is none)."""
    finite = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if finite.size == 0:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {"n": int(finite.size), "mean": float(finite.mean()),
            "std": float(finite.std(ddof=1)) if finite.size > 1 else None,
            "min": float(finite.min()), "max": float(finite.max())}


def summarize(runs: Dict[str, dict], classes: bool = False) -> List[dict]:
    """One entry per group: its key, its files, its configs, and statistics per score (and per class IoU)."""
    groups: "OrderedDict[tuple, List[str]]" = OrderedDict()
    for path, run in runs.items():
        groups.setdefault(group_of(run), []).append(path)
    out = []
    for key, paths in groups.items():
        members = [runs[p] for p in paths]
        scores = OrderedDict((name, statistics([m.get(name) for m in members])) for name in SCORE_KEYS
                             if any(name in m for m in members))
        entry = {**dict(zip(GROUP_KEYS, key)), "files": paths,
                 "configs": sorted({str(m.get("config")) for m in members}), "scores": scores}
        if classes:
            names = list(OrderedDict.fromkeys(n for m in members for n in m.get("class_iou", {})))
            entry["class_iou"] = OrderedDict((n, statistics([m.get("class_iou", {}).get(n) for m in members]))
                                             for n in names)
        out.append(entry)
    return out


def _cell(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.4f}"


def _mean_std(stat: dict) -> str:
    if stat["mean"] is None:
        return "—"
    return _cell(stat["mean"]) + ("" if stat["std"] is None else f" ± {stat['std']:.4f}")


def _rows(entry: dict):
    rows = [(name, stat) for name, stat in entry["scores"].items()]
    rows += [(f"IoU {name}", stat) for name, stat in entry.get("class_iou", {}).items()]
    return [(name, _mean_std(s), _cell(s["min"]), _cell(s["max"]), str(s["n"])) for name, s in rows]


def title(entry: dict) -> str:
    calibration = f", calibration {entry['calibration']:g}" if entry["calibration"] else ""
    return (f"{entry['method']} on {entry['dataset']}, eval_mode {entry['eval_mode']}{calibration}: "
            f"{len(entry['files'])} run(s)")


def text_table(entry: dict) -> str:
    header = ("score", "mean ± std", "min", "max", "n")
    body = _rows(entry)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])])
             for r in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(entry: dict) -> str:
    lines = [f"**{title(entry)}** ({', '.join(os.path.basename(os.path.dirname(f)) or f for f in entry['files'])})",
             "", "| score | mean ± std | min | max | n |", "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in _rows(entry)]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    runs = OrderedDict((path, load_run(path)) for path in args.results)
    entries = summarize(runs, args.classes)
    if args.strict and len(entries) > 1:
        raise ValueError("the runs mix " + "; ".join(f"{title(e)} ({', '.join(e['files'])})" for e in entries)
                         + " — summarise each group separately or drop --strict to group them")
    blocks = []
    for entry in entries:
        note = ""
        if len(entry["configs"]) > 1:
            note = f"\nnote: these runs name different configs: {', '.join(entry['configs'])}"
        blocks.append(f"{title(entry)}\n{text_table(entry)}{note}")
    print("\n\n".join(blocks))
    if args.markdown:
        text = "\n\n".join(markdown_table(e) for e in entries) + "\n"
        atomic_write(args.markdown, lambda f: f.write(text), binary=False)
    if args.json:
        atomic_write(args.json, lambda f: json.dump(entries, f, indent=2), binary=False)
    return 0


if __name__ == "__main__":
    run_cli(main)
