"""The built-in zero-shot demo, end to end (what `make demo` runs):

  1. generate the synthetic benchmark into dataset/demo/ (once; skipped when present),
  2. train step 1 on the seen classes (configs/demo.yaml),
  3. finetune with the mixed schedule (configs/demo_finetune.yaml),
  4. evaluate both models (`--eval_modes`, default the original's feature mode), print the paper-style table side
     by side and draw input / ground truth / step-1 prediction / mixed prediction for a few test images into
     demo_output/predictions.png.

Every stage goes through train.py with the same code as the paper's configs. Run it from the repository root
(`python -m demo`, or `make demo`): the demo configs name their folders relative to it. A demo run trains its
stages with `--overwrite`: running it again replaces the checkpoints of the same --experimentid.
"""
import argparse
import json
import os
import time

import train
from demo.data import generate_demo, is_complete
from libs.config import iter_max, load_config
from libs.engine.evaluation import EVAL_MODES
from libs.engine.precision import AMP_MODES
from libs.engine.run import experiment_dir
from libs.engine.schedules import get_schedule
from libs.metrics import format_score_table
from tools import visualize_predictions


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml", help="step-1 config")
    parser.add_argument("--finetune_config", default="configs/demo_finetune.yaml", help="mixed-schedule config")
    parser.add_argument("--out", default="demo_output", help="folder for the scores, predictions and picture")
    parser.add_argument("--experimentid", default="0", help="experiment id under Results/demo/")
    parser.add_argument("--seed", type=int, default=0, help="seed of training (and of the data unless --data_seed)")
    parser.add_argument("--data_seed", type=int, default=None,
                        help="seed of the data generation (default: --seed); keep it fixed to compare training seeds")
    parser.add_argument("--eval_modes", nargs="+", default=["feature"], choices=EVAL_MODES,
                        help="evaluation protocols of each model (default: feature, the original's); the scores of "
                             "mode M other than feature go to scores_<stage>_M.json")
    parser.add_argument("--n_train", type=int, default=1200, help="training images to generate")
    parser.add_argument("--n_test", type=int, default=200, help="test images to generate")
    parser.add_argument("--step1_iters", type=int, default=None, help="shorten step 1 (default: the config's)")
    parser.add_argument("--mixed_iters", type=int, default=None, help="shorten mixed (default: the config's)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--amp", default=None, choices=AMP_MODES,
                        help="mixed precision of every stage (train.py --amp)")
    parser.add_argument("--channels_last", action="store_true", help="train.py --channels_last for every stage")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.time()
    step1_cfg = load_config(args.config)
    data_root = step1_cfg["ROOT"]
    data_seed = args.seed if args.data_seed is None else args.data_seed
    if is_complete(data_root, seed=data_seed, n_train=args.n_train, n_test=args.n_test):
        print(f"demo data: {data_root} is complete")
    else:
        print(f"demo data: generating {args.n_train} training and {args.n_test} test images into {data_root}")
        generate_demo(data_root, seed=data_seed, n_train=args.n_train, n_test=args.n_test, progress=True)

    common = ["--experimentid", args.experimentid, "--seed", str(args.seed), "--device", args.device]
    common += (["--amp", args.amp] if args.amp else []) + (["--channels_last"] if args.channels_last else [])
    step1_iters = args.step1_iters or iter_max(step1_cfg, "step1")
    step1_model = os.path.join(experiment_dir(step1_cfg, args.experimentid), get_schedule("step1").model_dir,
                               "%08d.pth" % step1_iters)
    finetune_cfg = load_config(args.finetune_config)
    mixed_iters = args.mixed_iters or iter_max(finetune_cfg, "mixed")
    mixed_model = os.path.join(experiment_dir(finetune_cfg, args.experimentid), get_schedule("mixed").model_dir,
                               "%08d.pth" % mixed_iters)
    os.makedirs(args.out, exist_ok=True)
    scores = {}

    def stage(name, train_args, model, config):
        print(f"\n== {name}: training ==")
        code = train.main(train_args)
        if code:
            raise SystemExit(code)
        for mode in args.eval_modes:
            column = name if mode == "feature" else f"{name}_{mode}"
            print(f"\n== {name}: evaluation (eval_mode {mode}) ==")
            results = os.path.join(args.out, f"scores_{column}.json")
            train.main(["--config", config, "--init_model", model, "--val", "--eval_mode", mode, "--results_json",
                        results, "--save_predictions", os.path.join(args.out, f"predictions_{column}"), *common])
            with open(results) as handle:
                scores[column] = json.load(handle)

    stage("step1", ["--config", args.config, "--schedule", "step1", "--max_iter", str(step1_iters), "--overwrite",
                    *common], step1_model, args.config)
    stage("mixed", ["--config", args.finetune_config, "--schedule", "mixed", "--init_model", step1_model,
                    "--max_iter", str(mixed_iters), "--overwrite", *common], mixed_model, args.finetune_config)

    picture = os.path.join(args.out, "predictions.png")
    column = "{}" if args.eval_modes[0] == "feature" else "{}_" + args.eval_modes[0]
    visualize_predictions.main(["--root", data_root, "--split", "val", "--num", "6", "--out", picture, *[
        item for stage in ("step1", "mixed")
        for item in ("--pred", f"{stage}={os.path.join(args.out, 'predictions_' + column.format(stage))}")]])
    table = format_score_table(scores)
    minutes = (time.time() - start) / 60
    summary = (f"\nCaGNet on the synthetic zero-shot demo (unseen: potted_plant, sheep, sofa, train, tv)\n{table}\n"
               f"picture: {picture}\nwall time: {minutes:.1f} min\n")
    print(summary)
    with open(os.path.join(args.out, "summary.txt"), "w") as handle:
        handle.write(summary)
    return scores


if __name__ == "__main__":
    main()
