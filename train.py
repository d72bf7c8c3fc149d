"""CaGNet: train (step1 / mixed / st / st_mixed) or evaluate (--val). The one entry point.

    python train.py --config ./configs/voc12.yaml --schedule step1
    python train.py --config ./configs/voc12_finetune.yaml --schedule mixed
    python train.py --config ./configs/voc12.yaml --init_model ./trained_models/voc12_ourbest.pth --val
    python train.py --config ./configs/voc12.yaml --init_model ./trained_models/voc12_ourbest.pth --val --eval_mode full
    torchrun --nproc_per_node 4 train.py --config ./configs/voc12.yaml --schedule step1 --multigpus --ngpu 4
"""
from __future__ import annotations

import argparse
import os
import sys

from libs.checkpoint import trust_checkpoints
from libs.datasets.check import CHECK_MODES
from libs.engine.evaluation import EVAL_MODES
from libs.engine.loop import NonFiniteLoss
from libs.engine.precision import AMP_MODES
from libs.engine.run import Run, RunOptions, run_config
from libs.engine.schedules import SCHEDULE_NAMES
from libs.io import OutputError, log


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="***.yaml", help="YAML config (configs/*.yaml)")
    parser.add_argument("--experimentid", default="0", help="experiment sub-folder of Results/<dataset>/")
    parser.add_argument("--resume_from", type=int, default=0,
                        help="resume the schedule from its checkpoint of this iteration (> 0)")
    parser.add_argument("--schedule", default="step1", choices=SCHEDULE_NAMES, help="training schedule")
    parser.add_argument("--init_model", default="none", help="checkpoint to start from (overrides init_model)")
    parser.add_argument("--val", action="store_true", help="evaluate --init_model on the test set only")
    parser.add_argument("--multigpus", action="store_true",
                        help="data-parallel training, and sharded evaluation with --val, over the processes "
                             "started by torchrun")
    parser.add_argument("--ngpu", type=int, default=0,
                        help="GPU id (single GPU) or number of GPUs (with --multigpus)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto = cuda if available, else cpu")
    parser.add_argument("--seed", type=int, default=None, help="RNG seed (default: the config's seed key, 0)")
    parser.add_argument("--results_json", default=None,
                        help="--val: write the scores here (default Results/<dataset>/<experimentid>/"
                             "results_val_<checkpoint>.json, named after --init_model and the protocol)")
    parser.add_argument("--save_predictions", default=None,
                        help="--val: write <image id>.png with predicted raw label ids into this folder")
    parser.add_argument("--save_colour", action="store_true",
                        help="with --save_predictions: also colour/<image id>.png (the palette) and "
                             "overlay/<image id>.png (the prediction on the image, with a legend)")
    parser.add_argument("--eval_mode", default=None, choices=EVAL_MODES,
                        help="evaluation protocol (default: the config's eval_mode): feature = the original's "
                             "(65x65), warped = at the 513x513 network input, full = at each image's original size")
    parser.add_argument("--calibrate", type=float, default=None, metavar="GAMMA",
                        help="calibrated stacking: subtract GAMMA from the seen classes' probabilities "
                             "(default: the config's calibration, 0)")
    parser.add_argument("--max_iter", type=int, default=None,
                        help="stop after this many iterations instead of the config's ITER_MAX* (quick runs)")
    parser.add_argument("--amp", default=None, choices=AMP_MODES,
                        help="mixed precision (default: the config's amp, off = float32, the faithful numbers)")
    parser.add_argument("--channels_last", action="store_true", default=None,
                        help="channels-last memory layout for the convolutions (default: the config's channels_last)")
    parser.add_argument("--extend_to", type=int, default=None, metavar="N",
                        help="with --resume_from: train the schedule to N iterations instead of its ITER_MAX* (the "
                             "poly rate continues from the resumed iteration towards 0 at N)")
    parser.add_argument("--skip_nonfinite", type=int, default=0, metavar="N",
                        help="skip up to N batches whose loss is NaN/inf (no update; counted in the log); "
                             "default 0: the first one stops the run (exit status 3)")
    parser.add_argument("--check_data", default="header", choices=CHECK_MODES,
                        help="before training / --val: every listed image and annotation exists and its header "
                             "decodes (header, the default), also every pixel and the label values (deep), or off")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the schedule's earlier checkpoints in this experiment and train again "
                             "(without it such a run is refused)")
    parser.add_argument("--trust_checkpoint", action="store_true",
                        help="also load checkpoints that need full unpickling (which can run arbitrary code): "
                             "only for files from a source you trust, e.g. snapshots of earlier versions")
    args = parser.parse_args(argv)
    if args.val and args.resume_from > 0:
        parser.error("--val cannot be combined with --resume_from")
    if args.resume_from > 0 and args.init_model != "none":
        parser.error("--init_model does not apply with --resume_from: a resumed run continues from its checkpoint "
                     "of that iteration; drop --init_model")
    if args.resume_from > 0 and args.overwrite:
        parser.error("--overwrite does not apply with --resume_from (a resume continues the run's checkpoints)")
    if args.extend_to is not None and args.resume_from <= 0:
        parser.error("--extend_to N needs --resume_from: it lengthens a run when resuming it (a new run takes its "
                     "length from the config's ITER_MAX*)")
    if args.skip_nonfinite < 0:
        parser.error(f"--skip_nonfinite {args.skip_nonfinite}: expected a number of batches >= 0")
    if args.init_model != "none" and not os.path.isfile(args.init_model):
        parser.error(f"--init_model {args.init_model!r} does not exist")
    if not args.val and (args.results_json or args.save_predictions):
        parser.error("--results_json and --save_predictions apply to --val")
    if args.save_colour and not args.save_predictions:
        parser.error("--save_colour needs --save_predictions DIR (the pictures go to DIR/colour and DIR/overlay)")
    if args.calibrate is not None and not 0 <= args.calibrate <= 1:
        parser.error(f"--calibrate {args.calibrate}: expected a value in [0, 1] (subtracted from probabilities)")
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    trust_checkpoints(args.trust_checkpoint)
    options = RunOptions(schedule=args.schedule, experiment_id=args.experimentid, resume_from=args.resume_from,
                         init_model=None if args.init_model == "none" else args.init_model, device=args.device,
                         multigpus=args.multigpus, ngpu=args.ngpu, seed=args.seed, max_iter=args.max_iter,
                         evaluate_only=args.val, eval_mode=args.eval_mode, calibration=args.calibrate,
                         amp=args.amp, channels_last=args.channels_last, extend_to=args.extend_to,
                         skip_nonfinite=args.skip_nonfinite, check_data=args.check_data, overwrite=args.overwrite,
                         command=tuple(argv))
    run = Run(run_config(args.config, options), options, args.config)
    if args.val:
        run.evaluate(args.results_json, args.save_predictions, args.save_colour)
        return 0
    return run.train()


def _report(error: Exception) -> None:
    # The logger prints to the console once set up; before that (a bad config) only stderr can say it.
    if log.handlers:
        log.error("error: %s", error)
    else:
        print(f"error: {error}", file=sys.stderr)


if __name__ == "__main__":
    # Exit status: 0 done, 2 bad input, 3 non-finite loss or weights, 128 + signal when SIGINT (130) or SIGTERM
    # (143) stopped the run after saving its state (docs/method.md §8.8).
    try:
        sys.exit(main())
    except NonFiniteLoss as error:
        _report(error)
        sys.exit(3)
    except KeyboardInterrupt:       # outside training (which saves and stops cleanly): --val, start-up
        print("\ninterrupted (nothing to save outside training)", file=sys.stderr)
        sys.exit(130)
    except (ValueError, FileNotFoundError, OutputError) as error:
        _report(error)
        sys.exit(2)
