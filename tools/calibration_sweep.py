"""The calibration sweep of SPNet-c (baselines-spec §1.4): one pass over the test set, every γ scored at once.

    python -m tools.calibration_sweep --config configs/spnet_context.yaml \\
        --init_model Results/context/spnet/models/00020000.pth --out Results/context/spnet/sweep.json

For every γ (default 0.0, 0.1, ..., 0.9) the scores of `--val --calibrate γ` under the config's eval_mode
(`feature` or `warped`; `--eval_mode` overrides it): the model runs once per test batch, and each γ's prediction
(`libs.engine.evaluation.predicted_ids`) goes into its own confusion matrix. Prints hIoU / mIoU / S-mIoU / U-mIoU
per γ and the γ of the best hIoU; --out writes all 16 scores per γ as JSON. Choosing γ this way selects on the
test set (as the original selected its snapshots): report it with the γ, beside the fixed-γ rows.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, Sequence

if not __package__:  # `python tools/<name>.py`: the repository root on the path, as `python -m tools.<name>` has it
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch
import torch.nn.functional as F

from libs.engine.evaluation import predicted_ids
from libs.engine.run import Run, RunOptions, run_config
from libs.metrics import SCORE_KEYS, gzsl_scores, new_confusion, update_confusion
from models.ops import nearest_resize
from tools import run_cli

DEFAULT_GAMMAS = tuple(round(0.1 * k, 1) for k in range(10))


@torch.no_grad()
def sweep(run: Run, gammas: Sequence[float]) -> Dict[float, dict]:
    """γ -> gzsl_scores of the run's model on its test set (eval_mode feature or warped)."""
    if run.eval_mode not in ("feature", "warped"):
        raise ValueError(f"calibration_sweep: eval_mode {run.eval_mode!r} is not supported; use feature or warped")
    model, splits, device = run.model, run.splits, run.device
    model.eval()
    n = splits.num_classes
    test_map = torch.tensor(np.array(splits.test_map), device=device)
    confusions = {g: new_confusion(n, device) for g in gammas}
    for images, raw_labels, _ids in run._test_loader():
        images = images.to(device)
        with run.precision.autocast():
            logits = model.predict(images)
        logits = logits.float()
        if run.eval_mode == "warped":
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        gt = test_map[nearest_resize(raw_labels.to(device), logits.shape[-2:]).clamp(0, len(test_map) - 1)]
        for gamma in gammas:
            update_confusion(confusions[gamma], gt, predicted_ids(logits, splits.num_seen, n, gamma), n)
    return {g: gzsl_scores(c.cpu(), splits.num_seen) for g, c in confusions.items()}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the model's config (e.g. configs/spnet_context.yaml)")
    parser.add_argument("--init_model", required=True, help="checkpoint to evaluate")
    parser.add_argument("--gammas", default=",".join(str(g) for g in DEFAULT_GAMMAS),
                        help="comma-separated γ values in [0, 1] (default 0.0,0.1,...,0.9)")
    parser.add_argument("--eval_mode", default=None, choices=("feature", "warped"),
                        help="protocol (default: the config's eval_mode)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--out", default=None, help="write {γ: all 16 scores} as JSON here")
    args = parser.parse_args(argv)
    try:
        args.gammas = [float(g) for g in args.gammas.split(",") if g.strip()]
    except ValueError:
        parser.error(f"--gammas {args.gammas!r}: expected comma-separated numbers")
    if not args.gammas or any(not 0 <= g <= 1 for g in args.gammas):
        parser.error(f"--gammas {args.gammas}: expected values in [0, 1]")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    options = RunOptions(init_model=args.init_model, device=args.device, evaluate_only=True,
                         eval_mode=args.eval_mode)
    run = Run(run_config(args.config, options), options, args.config)
    results = sweep(run, args.gammas)
    print(f"{'gamma':>6} {'hIoU':>7} {'mIoU':>7} {'S-mIoU':>7} {'U-mIoU':>7}   ({run.eval_mode}, {args.init_model})")
    for gamma, s in results.items():
        print(f"{gamma:6.2f} {s['hIoU']:7.4f} {s['mIoU']:7.4f} {s['S-mIoU']:7.4f} {s['U-mIoU']:7.4f}")
    best = max(results, key=lambda g: -1.0 if np.isnan(results[g]["hIoU"]) else results[g]["hIoU"])
    print(f"best hIoU {results[best]['hIoU']:.4f} at gamma {best:g}")
    if args.out:
        record = {"config": args.config, "checkpoint": args.init_model, "eval_mode": run.eval_mode, "best_gamma": best,
                  "scores": {f"{g:g}": {k: (None if np.isnan(s[k]) else float(s[k])) for k in SCORE_KEYS}
                             for g, s in results.items()}}
        with open(args.out, "w") as handle:
            json.dump(record, handle, indent=2)
    return 0


if __name__ == "__main__":
    run_cli(main)
