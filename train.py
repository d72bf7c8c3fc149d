"""CaGNet: train (step1 / mixed / st / st_mixed) or evaluate (--val). The one entry point.

    python train.py --config ./configs/voc12.yaml --schedule step1
    python train.py --config ./configs/voc12_finetune.yaml --schedule mixed
    python train.py --config ./configs/voc12.yaml --init_model ./trained_models/voc12_ourbest.pth --val
    torchrun --nproc_per_node 4 train.py --config ./configs/voc12.yaml --schedule step1 --multigpus --ngpu 4
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import torch

from libs.builders import (build_model, build_splits, build_test_dataset, build_train_dataset, build_trainer,
                           test_loader)
from libs.checkpoint import atomic_save, load_model_weights, read_checkpoint, snapshot
from libs.config import SCHEDULES, check_schedule_keys, iter_max, load_config, save_config
from libs.logger import progress_bar, setup_logging
from libs.loop import BatchStream, fit, rng_state, seed_everything, set_rng_state
from libs.metrics import format_score_table, scores_to_json
from libs.trainer import calibrate_batchnorm, evaluate
from models.cagnet import init_weights

log = logging.getLogger("cagnet")

# Per schedule: model folder, log file and config copy inside Results/<dataset>/<experimentid>/ (spec §10).
OUTPUTS = {
    "step1": ("models", "logs.txt", "configs.yaml"),
    "mixed": ("models_transfer", "logs_transfer.txt", "configs_transfer.yaml"),
    "st": ("models_st", "logs_st.txt", "configs_st.yaml"),
    "st_mixed": ("models_st_transfer", "logs_st_transfer.txt", "configs_st_transfer.yaml"),
}
HEADLINE = ("hIoU", "mIoU", "pixel_acc", "mean_acc", "S-mIoU", "U-mIoU")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="***.yaml", help="YAML config (configs/*.yaml)")
    parser.add_argument("--experimentid", default="0", help="experiment sub-folder of Results/<dataset>/")
    parser.add_argument("--resume_from", type=int, default=0,
                        help="resume the schedule from its checkpoint of this iteration (> 0)")
    parser.add_argument("--schedule", default="step1", choices=SCHEDULES, help="training schedule")
    parser.add_argument("--init_model", default="none", help="checkpoint to start from (overrides init_model)")
    parser.add_argument("--val", action="store_true", help="evaluate --init_model on the test set only")
    parser.add_argument("--multigpus", action="store_true",
                        help="data-parallel training over the processes started by torchrun")
    parser.add_argument("--ngpu", type=int, default=0,
                        help="GPU id (single GPU) or number of GPUs (with --multigpus)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto = cuda if available, else cpu")
    parser.add_argument("--seed", type=int, default=None, help="RNG seed (default: the config's seed key, 0)")
    parser.add_argument("--results_json", default=None,
                        help="--val: write the scores here (default Results/<dataset>/<experimentid>/results_val.json)")
    parser.add_argument("--save_predictions", default=None,
                        help="--val: write <image id>.png with predicted raw label ids into this folder")
    parser.add_argument("--max_iter", type=int, default=None,
                        help="stop after this many iterations instead of the config's ITER_MAX* (quick runs)")
    args = parser.parse_args(argv)
    if args.val and args.resume_from > 0:
        parser.error("--val cannot be combined with --resume_from")
    if args.init_model != "none" and not os.path.isfile(args.init_model):
        parser.error(f"--init_model {args.init_model!r} does not exist")
    if not args.val and (args.results_json or args.save_predictions):
        parser.error("--results_json and --save_predictions apply to --val")
    return args


def select_device(args, local_rank: int | None) -> torch.device:
    if args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available on this machine; use --device cpu")
    index = local_rank if local_rank is not None else args.ngpu
    if index >= torch.cuda.device_count():
        raise ValueError(f"--ngpu {index}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    torch.backends.cudnn.benchmark = True
    return torch.device("cuda", index)


def setup_distributed(args):
    """(rank, world_size, local_rank, grad_sync) for torchrun; (0, 1, None, None) for one process."""
    if not args.multigpus:
        return 0, 1, None, None
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ValueError("--multigpus runs one process per GPU: start it with "
                         "`torchrun --nproc_per_node N train.py ... --multigpus --ngpu N`")
    import torch.distributed as dist
    world = int(os.environ["WORLD_SIZE"])
    if args.ngpu > 1 and args.ngpu != world:
        raise ValueError(f"--ngpu {args.ngpu} but torchrun started {world} processes; they must agree")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = args.device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")

    def grad_sync(params):
        """Average gradients over processes, as DistributedDataParallel does, in one flat all-reduce."""
        grads = [p.grad for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    return dist.get_rank(), world, (local_rank if use_cuda else None), grad_sync


def load_run_config(args, exp_dir_of):
    """The config of this run: --config, or on resume the copy saved by the interrupted run (spec §2)."""
    cfg = load_config(args.config)
    if args.resume_from > 0:
        copy = os.path.join(exp_dir_of(cfg), OUTPUTS[args.schedule][2])
        if not os.path.isfile(copy):
            raise FileNotFoundError(f"--resume_from {args.resume_from}: the run's config copy {copy} is missing")
        saved = load_config(copy)
        for key in ("save_path", "dataset"):
            if saved[key] != cfg[key]:
                raise ValueError(f"--resume_from: {copy} has {key}={saved[key]!r} but {args.config} has "
                                 f"{cfg[key]!r}; resume with the config the run was started with")
        cfg = saved
    return cfg


def report_scores(scores, splits, header: str) -> None:
    log.info("%s\n%s", header, format_score_table({"CaGNet": scores}, splits.test_names))


def main(argv=None) -> int:
    args = parse_args(argv)
    exp_dir_of = lambda c: os.path.join(c["save_path"], c["dataset"], args.experimentid)  # noqa: E731
    cfg = load_run_config(args, exp_dir_of)
    if not args.val:
        check_schedule_keys(cfg, args.schedule)
    rank, world, local_rank, grad_sync = setup_distributed(args)
    device = select_device(args, local_rank)
    exp_dir = exp_dir_of(cfg)
    model_dir, log_name, config_copy = (os.path.join(exp_dir, name) for name in OUTPUTS[args.schedule])
    log_file = os.path.join(cfg["save_path"], cfg["dataset"], "logs_test.txt") if args.val else log_name
    setup_logging(log_file if rank == 0 else None, quiet=rank != 0)
    seed = cfg.value("seed", 0) if args.seed is None else args.seed
    seed_everything(seed)

    splits = build_splits(cfg)
    model = build_model(cfg, splits)
    test_data = build_test_dataset(cfg, splits)
    init_model = args.init_model if args.init_model != "none" else cfg.value("init_model", "none")
    if args.resume_from <= 0:
        init_weights(model, cfg["init"])
        if init_model not in (None, "none"):
            log.info(load_model_weights(model, init_model).summary())
        elif args.val or args.schedule == "st":
            raise ValueError(f"{'--val' if args.val else '--schedule st'} needs a model: pass --init_model "
                             f"(the config {args.config} has no init_model)")
    model.to(device)

    if args.val:
        loader = test_loader(test_data, cfg, device)
        scores = evaluate(model, loader, splits, device, args.save_predictions, progress_bar("test"))
        report_scores(scores, splits, f"Test results of {init_model}:")
        results = args.results_json or os.path.join(exp_dir, "results_val.json")
        os.makedirs(os.path.dirname(os.path.abspath(results)), exist_ok=True)
        with open(results, "w") as handle:
            json.dump({"model": init_model, "config": args.config, **scores_to_json(scores, splits.test_names)},
                      handle, indent=2)
        log.info("scores written to %s", results)
        return 0

    train_data = build_train_dataset(cfg, splits, seed)
    trainer = build_trainer(cfg, model, splits, args.schedule, grad_sync)
    stream = BatchStream(train_data, cfg.value("BATCH_SIZE.TRAIN"), min(cfg["NUM_WORKERS"], os.cpu_count() or 1),
                         seed, pin_memory=device.type == "cuda", rank=rank, world_size=world)
    start, num_pixels = 0, None
    if args.resume_from > 0:
        path = os.path.join(model_dir, "%08d.pth" % args.resume_from)
        checkpoint = read_checkpoint(path)
        log.info(load_model_weights(model, checkpoint, path).summary())
        start = int(checkpoint["iteration"])
        state = checkpoint.get("training_state")
        if state is not None:
            trainer.load_state_dict(state["trainer"])
            stream.load_state_dict(state["stream"])
            set_rng_state(state["rng"])
            num_pixels = state["num_pixels"]
        else:
            # A checkpoint of the original code: weights only. Learning rates continue at the right
            # position (the original was off by one here); optimizer moments restart, as in the original.
            for sched in trainer.schedulers.values():
                sched.load_state_dict({"last_iter": start})
            log.warning("%s holds no training state: optimizer moments and data order restart", path)
    elif cfg.value("back.bn_calibration_batches", 0) > 0 and init_model in (None, "none"):
        used = calibrate_batchnorm(model, (stream.next()[0] for _ in range(cfg.value("back.bn_calibration_batches"))),
                                   device)
        log.info("estimated the frozen BatchNorm statistics from %d training batches", used)
        stream.load_state_dict({"epoch": 0, "position": 0})     # training still starts at the first batch
    elif cfg.value("back.bn_calibration_batches", 0) > 0:
        log.info("back.bn_calibration_batches ignored: the BatchNorm statistics come from %s", init_model)
    if rank == 0 and args.resume_from <= 0:
        os.makedirs(exp_dir, exist_ok=True)
        save_config(cfg, config_copy)
    writer = None
    if rank == 0:
        from tensorboardX import SummaryWriter
        writer = SummaryWriter(os.path.join(exp_dir, "tensorboard", args.schedule))
    loader = test_loader(test_data, cfg, device)

    def save(iteration, pixels):
        if rank != 0:
            return
        state = {"trainer": trainer.state_dict(), "stream": stream.state_dict(), "rng": rng_state(),
                 "num_pixels": pixels, "schedule": args.schedule}
        path = os.path.join(model_dir, "%08d.pth" % iteration)
        atomic_save(snapshot(model, iteration, state, cfg.to_dict()), path)
        log.info("saved %s", path)

    def run_test(iteration):
        if rank != 0:
            return
        scores = evaluate(model, loader, splits, device, None, progress_bar("test", leave=False))
        log.info("Test results:\n" + "\n".join(f"{k}: {scores[k]:.4f}" for k in HEADLINE) + "\n" +
                 json.dumps(scores_to_json(scores, splits.test_names)["class_iou"]))
        for k in HEADLINE:
            writer.add_scalar(f"test/{k}", scores[k], iteration)

    max_iter = iter_max(cfg, args.schedule) if args.max_iter is None else min(args.max_iter, iter_max(cfg, args.schedule))
    mixed = args.schedule in ("mixed", "st_mixed")
    intervals = (cfg["interval_step1"], cfg["interval_step2"], cfg["first"]) if mixed else None
    fit(trainer, stream, schedule=args.schedule, start=start, max_iter=max_iter, intervals=intervals,
        device=device, num_pixels=num_pixels, save=save, evaluate=run_test, snapshot=cfg["snapshot"],
        display_interval=cfg["display_interval"], log_interval=cfg["log_interval"], writer=writer,
        progress=progress_bar(args.schedule) if rank == 0 else None)
    if writer is not None:
        writer.close()
    if world > 1 or args.multigpus:
        import torch.distributed as dist
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError) as error:
        logging.getLogger("cagnet").error("error: %s", error)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
