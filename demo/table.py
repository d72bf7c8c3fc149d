"""The paper's six rows on the built-in demo benchmark (what `make demo-table` runs):

    python -m demo.table                                  # all six rows -> demo_output/table.{json,md}, picture
    python -m demo.table --rows CaGNet CaGNet+ST --max_iter 40   # a quick check of two rows

Every row is trained and evaluated through train.py on dataset/demo (made by demo/data.py, as in `make demo`).
The table below is the whole recipe: a row names the stage whose final checkpoint it evaluates and its --val
flags; a stage is one train.py run (config, --schedule, and the stage whose checkpoint it starts from). Rows share
stages: SPNet-c evaluates SPNet's checkpoint with --calibrate γ, CaGNet+ST continues from CaGNet's mixed model.

A stage whose final checkpoint is already there, made by the same config (the run's config copy in
Results/demo/<id>/), seed, precision and starting checkpoint, from an upstream stage that was not retrained now
and on data that were not regenerated now, is reused instead of trained again; table.md says which. So the
CaGNet stages are the very runs of `make demo` (same configs, experiment id 0, seed 0) and are not trained twice.
Evaluation (seconds) always runs. Outputs: <out>/table.json (a list of {"method", hIoU, mIoU, pixel_acc, mean_acc,
S-mIoU, U-mIoU}), <out>/table.md, <out>/table_predictions.png, and per row <out>/table/scores_<row>.json and
<out>/table/predictions_<row>/.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import train
from demo.data import generate_demo, is_complete
from libs.checkpoint import read_checkpoint
from libs.config import iter_max, load_config
from libs.engine.evaluation import EVAL_MODES
from libs.engine.run import experiment_dir
from libs.engine.schedules import get_schedule
from libs.io import atomic_write
from libs.metrics import JSON_KEYS
from tools import visualize_predictions


@dataclass(frozen=True)
class Stage:
    """One train.py run: `config` (a file name inside --configs), `schedule`, experiment id under Results/demo/,
    and the stage whose final checkpoint is its --init_model (None: the config's own start, e.g. from scratch)."""
    config: str
    schedule: str
    experiment: str
    init_from: Optional[str] = None


@dataclass(frozen=True)
class Row:
    """A row of the table: its label, the stage whose final checkpoint it evaluates, extra --val flags."""
    method: str
    stage: str
    val_flags: Tuple[str, ...] = ()


# SPNet-c's γ: SPNet's VOC value (run_pascal.sh), as the demo uses VOC's classes and split (baselines-spec §1.3).
SPNET_GAMMA = 0.6

STAGES: Dict[str, Stage] = {
    "spnet": Stage("demo_spnet.yaml", "step1", "spnet"),
    "zs3net_step1": Stage("demo_zs3net.yaml", "step1", "zs3net"),
    "zs3net": Stage("demo_zs3net_finetune.yaml", "mixed", "zs3net", init_from="zs3net_step1"),
    "zs3net_st": Stage("demo_zs3net_st.yaml", "st", "zs3net", init_from="zs3net"),
    "zs3net_st_mixed": Stage("demo_zs3net_st.yaml", "st_mixed", "zs3net", init_from="zs3net_st"),
    # the runs of `make demo` (demo/run.py): experiment 0, the same configs and seed
    "cagnet_step1": Stage("demo.yaml", "step1", "0"),
    "cagnet": Stage("demo_finetune.yaml", "mixed", "0", init_from="cagnet_step1"),
    "cagnet_st": Stage("demo_st.yaml", "st", "0", init_from="cagnet"),
    "cagnet_st_mixed": Stage("demo_st_transfer.yaml", "st_mixed", "0", init_from="cagnet_st"),
}

ROWS: Tuple[Row, ...] = (
    Row("SPNet", "spnet"),
    Row("SPNet-c", "spnet", ("--calibrate", "{gamma}")),
    Row("ZS3Net", "zs3net"),
    Row("ZS3Net+ST", "zs3net_st_mixed"),
    Row("CaGNet", "cagnet"),
    Row("CaGNet+ST", "cagnet_st_mixed"),
)
ROW_NAMES = tuple(row.method for row in ROWS)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=list(ROW_NAMES), choices=ROW_NAMES,
                        help="rows to train and evaluate (default: all six, in the paper's order)")
    parser.add_argument("--configs", default="configs", help="folder of the demo configs (default: configs)")
    parser.add_argument("--out", default="demo_output", help="folder of table.json, table.md and the picture")
    parser.add_argument("--seed", type=int, default=0, help="training seed of every stage (make demo's: 0)")
    parser.add_argument("--data_seed", type=int, default=0, help="seed of the generated data (make demo's: 0)")
    parser.add_argument("--n_train", type=int, default=1200, help="training images to generate")
    parser.add_argument("--n_test", type=int, default=200, help="test images to generate")
    parser.add_argument("--max_iter", type=int, default=None,
                        help="cap every stage at this many iterations (quick checks; default: the configs')")
    parser.add_argument("--gamma", type=float, default=SPNET_GAMMA,
                        help=f"SPNet-c's calibration γ (default {SPNET_GAMMA}, SPNet's VOC value)")
    parser.add_argument("--eval_mode", default="feature", choices=EVAL_MODES,
                        help="evaluation protocol of every row (default: feature, the original's)")
    parser.add_argument("--picture_rows", type=int, default=5, help="test images shown in the picture")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args(argv)
    if args.max_iter is not None and args.max_iter < 1:
        parser.error(f"--max_iter must be at least 1, got {args.max_iter}")
    if len(set(args.rows)) != len(args.rows):
        parser.error(f"--rows lists a row twice: {args.rows}")
    return args


def needed_stages(rows: Sequence[Row]) -> List[str]:
    """The stages the rows need, each after the stage it starts from, each once (table order)."""
    order: List[str] = []

    def visit(name: str) -> None:
        if name not in STAGES:
            raise ValueError(f"demo.table: stage {name!r} is not in STAGES ({', '.join(STAGES)})")
        if name in order:
            return
        parent = STAGES[name].init_from
        if parent is not None:
            visit(parent)
        order.append(name)

    for row in rows:
        visit(row.stage)
    return order


class StagePlan:
    """Where a stage's config and final checkpoint are, and whether an earlier run of it can be reused."""

    def __init__(self, name: str, stage: Stage, configs: str, max_iter: Optional[int]):
        self.name, self.stage = name, stage
        self.config = os.path.join(configs, stage.config)
        if not os.path.isfile(self.config):
            raise FileNotFoundError(f"demo.table: stage {name} needs the config {self.config}, which does not exist")
        self.cfg = load_config(self.config)
        full = iter_max(self.cfg, stage.schedule)
        self.iterations = full if max_iter is None else min(max_iter, full)
        schedule = get_schedule(stage.schedule)
        self.exp_dir = experiment_dir(self.cfg, stage.experiment)
        self.config_copy = os.path.join(self.exp_dir, schedule.config_copy)
        self.checkpoint = os.path.join(self.exp_dir, schedule.model_dir, "%08d.pth" % self.iterations)

    def reuse_problem(self, seed: int, init_model: Optional[str]) -> Optional[str]:
        """None when the final checkpoint was made by this stage as planned now; else why it cannot be reused."""
        if not os.path.isfile(self.checkpoint):
            return f"no checkpoint {self.checkpoint}"
        if not os.path.isfile(self.config_copy):
            return f"no config copy {self.config_copy}"
        if load_config(self.config_copy).to_dict() != self.cfg.to_dict():
            return f"{self.config_copy} differs from {self.config}"
        state = read_checkpoint(self.checkpoint).get("training_state")
        run = state.get("run", {}) if isinstance(state, dict) else {}
        expected = {"seed": seed, "amp": "off", "init_model": _norm(init_model)}
        found = {"seed": run.get("seed"), "amp": run.get("amp"), "init_model": _norm(run.get("init_model"))}
        for key, value in expected.items():
            if found[key] != value:
                return f"{self.checkpoint} was trained with {key}={found[key]!r}, not {value!r}"
        return None


def _norm(path: Optional[str]) -> Optional[str]:
    return None if path in (None, "none") else os.path.normpath(os.path.abspath(path))


def table_entry(method: str, scores: dict) -> dict:
    """The table.json object of a row: the method and the paper's six scores, nothing else."""
    return {"method": method, **{key: scores[key] for key in JSON_KEYS}}


def markdown(entries: List[dict], notes: List[str]) -> str:
    header = "| method | hIoU | mIoU | pixel acc. | mean acc. | S-mIoU | U-mIoU |"
    lines = [header, "|---" * 7 + "|"]
    for entry in entries:
        cells = ["—" if entry[key] is None else f"{entry[key]:.4f}" for key in JSON_KEYS]
        lines.append(f"| {entry['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def main(argv=None) -> List[dict]:
    args = parse_args(argv)
    start = time.time()
    rows = [row for row in ROWS if row.method in args.rows]
    names = needed_stages(rows)
    plans = {name: StagePlan(name, STAGES[name], args.configs, args.max_iter) for name in names}
    data_root = plans[names[0]].cfg["ROOT"]
    for plan in plans.values():
        if os.path.normpath(plan.cfg["ROOT"]) != os.path.normpath(data_root):
            raise ValueError(f"demo.table: {plan.config} reads ROOT={plan.cfg['ROOT']!r}, but "
                             f"{plans[names[0]].config} reads {data_root!r}; every row needs the same data")
    regenerated = not is_complete(data_root, seed=args.data_seed, n_train=args.n_train, n_test=args.n_test)
    if regenerated:
        print(f"demo data: generating {args.n_train} training and {args.n_test} test images into {data_root}")
        generate_demo(data_root, seed=args.data_seed, n_train=args.n_train, n_test=args.n_test, progress=True)
    else:
        print(f"demo data: {data_root} is complete")

    common = ["--seed", str(args.seed), "--device", args.device]
    trained, reused, stage_notes = set(), set(), {}
    for name in names:
        plan = plans[name]
        parent = plan.stage.init_from
        init = plans[parent].checkpoint if parent else None
        if regenerated:
            problem = "the data were generated now"
        elif parent in trained:
            problem = f"its starting stage {parent} was trained now"
        else:
            problem = plan.reuse_problem(args.seed, init)
        what = f"`{plan.config} --schedule {plan.stage.schedule}` ({plan.iterations} it" + (
            f", from {parent})" if parent else ")")
        if problem is None:
            print(f"\n== {name}: reusing {plan.checkpoint} (same config, seed and start) ==")
            reused.add(name)
            stage_notes[name] = f"{what}: **reused** {plan.checkpoint}"
            continue
        print(f"\n== {name}: training ({problem}) ==")
        stage_start = time.time()
        code = train.main(["--config", plan.config, "--schedule", plan.stage.schedule, "--experimentid",
                           plan.stage.experiment, "--max_iter", str(plan.iterations), "--overwrite", *common,
                           *(["--init_model", init] if init else [])])
        if code:
            raise SystemExit(code)
        trained.add(name)
        stage_notes[name] = f"{what}: trained in {(time.time() - stage_start) / 60:.1f} min"

    folder = os.path.join(args.out, "table")
    os.makedirs(folder, exist_ok=True)
    entries, predictions, val_notes = [], [], []
    for row in rows:
        plan = plans[row.stage]
        slug = row.method.replace("+", "_plus_")
        results = os.path.join(folder, f"scores_{slug}.json")
        preds = os.path.join(folder, f"predictions_{slug}")
        flags = [flag.format(gamma=args.gamma) for flag in row.val_flags]
        print(f"\n== {row.method}: evaluation of {plan.checkpoint} {' '.join(flags)} ==")
        train.main(["--config", plan.config, "--init_model", plan.checkpoint, "--val", "--eval_mode", args.eval_mode,
                    "--results_json", results, "--save_predictions", preds, *flags, *common])
        with open(results) as handle:
            entries.append(table_entry(row.method, json.load(handle)))
        predictions.append((row.method, preds))
        val_notes.append(f"- {row.method}: `--val` on {row.stage}'s final checkpoint"
                         + (f" with `{' '.join(flags)}`" if flags else ""))

    picture = os.path.join(args.out, "table_predictions.png")
    visualize_predictions.main(["--root", data_root, "--split", "val", "--num", str(args.picture_rows),
                                "--scale", "3", "--out", picture,
                                *[item for method, preds in predictions for item in ("--pred", f"{method}={preds}")]])
    minutes = (time.time() - start) / 60
    notes = [f"Synthetic zero-shot demo (dataset/demo, unseen: potted_plant, sheep, sofa, train, tv), eval_mode "
             f"{args.eval_mode}, seed {args.seed}; wall time {minutes:.1f} min "
             f"(stages: {len(trained)} trained, {len(reused)} reused).", "", "Stages (train.py runs):"]
    notes += [f"- {name}: {stage_notes[name]}" for name in names]
    notes += ["", "Rows:", *val_notes, "", f"Predictions: {picture}"]
    text = markdown(entries, notes)
    atomic_write(os.path.join(args.out, "table.json"), lambda f: json.dump(entries, f, indent=2), binary=False)
    atomic_write(os.path.join(args.out, "table.md"), lambda f: f.write(text), binary=False)
    print("\n" + text)
    return entries


if __name__ == "__main__":
    main()
