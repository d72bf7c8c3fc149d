"""The demo over several training seeds on the same data, each model evaluated in both the original's feature
mode and at full resolution, then summarised over the seeds (what `make demo-seeds` runs):

    python -m demo.seeds                       # seeds 0 1 2, the whole demo each
    python -m demo.seeds --seeds 0 1 2 --n_train 40 --n_test 20 --step1_iters 40 --mixed_iters 30   # quick check

Seed s trains into Results/demo/seed<s>/ (step 1, then mixed) and writes its scores and pictures to
<out>/seed<s>/ (scores_<stage>.json: eval_mode feature, scores_<stage>_full.json: eval_mode full). The mean ±
std, min and max of every score per stage and mode (tools/summarize_runs.py) go to <out>/summary.md and
<out>/summary.json. The data are generated once with --data_seed, so the runs differ in their training seed only.
"""
import argparse
import json
import os
from collections import OrderedDict

from demo import run as run_demo
from libs.io import atomic_write
from libs.metrics import JSON_KEYS
from tools import summarize_runs

MODES = ("feature", "full")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    parser.add_argument("--data_seed", type=int, default=0, help="seed of the generated data (default 0)")
    parser.add_argument("--out", default="demo_output/seeds", help="folder for the runs' outputs and the summary")
    parser.add_argument("--config", default="configs/demo.yaml", help="step-1 config")
    parser.add_argument("--finetune_config", default="configs/demo_finetune.yaml", help="mixed-schedule config")
    parser.add_argument("--n_train", type=int, default=1200, help="training images to generate")
    parser.add_argument("--n_test", type=int, default=200, help="test images to generate")
    parser.add_argument("--step1_iters", type=int, default=None, help="shorten step 1 (default: the config's)")
    parser.add_argument("--mixed_iters", type=int, default=None, help="shorten mixed (default: the config's)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds lists a seed twice: {args.seeds}")
    return args


def results_file(out: str, seed: int, stage: str, mode: str) -> str:
    return os.path.join(out, f"seed{seed}", f"scores_{stage}{'' if mode == 'feature' else '_' + mode}.json")


def headline_table(entries) -> str:
    """Markdown: the paper's six scores (rows) per stage and mode (columns), mean ± std (min – max)."""
    def cell(stat):
        if stat["mean"] is None:
            return "—"
        spread = "" if stat["std"] is None else f" ± {stat['std']:.4f}"
        return f"{stat['mean']:.4f}{spread} ({stat['min']:.4f} – {stat['max']:.4f})"
    header = "| score | " + " | ".join(f"{e['stage']}, {e['eval_mode']}" for e in entries) + " |"
    lines = [header, "|---" * (len(entries) + 1) + "|"]
    for key in JSON_KEYS:
        lines.append(f"| {key} | " + " | ".join(cell(e["scores"][key]) for e in entries) + " |")
    return "\n".join(lines)


def main(argv=None) -> list:
    args = parse_args(argv)
    shared = ["--config", args.config, "--finetune_config", args.finetune_config, "--n_train", str(args.n_train),
              "--n_test", str(args.n_test), "--device", args.device, "--data_seed", str(args.data_seed),
              "--eval_modes", *MODES]
    for name in ("step1_iters", "mixed_iters"):
        if getattr(args, name) is not None:
            shared += [f"--{name}", str(getattr(args, name))]
    for seed in args.seeds:
        print(f"\n==== seed {seed} ====")
        run_demo.main(["--seed", str(seed), "--experimentid", f"seed{seed}",
                       "--out", os.path.join(args.out, f"seed{seed}"), *shared])
    entries, blocks = [], []
    for stage in ("step1", "mixed"):
        for mode in MODES:
            runs = OrderedDict((path, summarize_runs.load_run(path))
                               for path in (results_file(args.out, s, stage, mode) for s in args.seeds))
            (entry,) = summarize_runs.summarize(runs, classes=True)
            entry["stage"] = stage
            entries.append(entry)
            blocks.append(f"### {stage}, eval_mode {mode}\n\n{summarize_runs.markdown_table(entry)}")
    seeds = ", ".join(str(s) for s in args.seeds)
    headline = headline_table(entries)
    print(f"\nThe demo over training seeds {seeds}: mean ± std (min – max)\n{headline}")
    text = (f"# The demo over training seeds {seeds} (data seed {args.data_seed})\n\nMean ± std (min – max) "
            f"over the seeds; every score and class below.\n\n{headline}\n\n" + "\n\n".join(blocks) + "\n")
    atomic_write(os.path.join(args.out, "summary.md"), lambda f: f.write(text), binary=False)
    atomic_write(os.path.join(args.out, "summary.json"),
                 lambda f: json.dump(entries, f, indent=2), binary=False)
    print(f"\nsummary: {os.path.join(args.out, 'summary.md')}")
    return entries


if __name__ == "__main__":
    main()
