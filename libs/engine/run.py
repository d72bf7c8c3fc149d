"""One training or evaluation run: its paths, what it builds from the config, and the save and restore of its
whole state in one place (docs/method.md §8).

Output layout (the original's, docs/method.md §5.1): `<save_path>/<dataset>/<experimentid>/` holds, per schedule,
the model folder (`%08d.pth` checkpoints), the log file and the config copy named by the schedule table, plus
`tensorboard/<schedule>/`; `--val` appends to `<save_path>/<dataset>/logs_test.txt`.
"""
from __future__ import annotations

import csv
import datetime
import json
import logging
import math
import os
import platform
import shlex
import signal
import subprocess
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from libs.checkpoint import (
    check_method,
    checkpoint_method,
    load_model_weights,
    prepare_snapshot_dir,
    read_checkpoint,
    save_checkpoint,
    snapshot,
)
from libs.config import Config, check_schedule_keys, iter_max, load_config, save_config
from libs.datasets import ZeroShotSegmentation, collate_test, load_class_splits, load_split_list
from libs.datasets.check import check_entries, describe_problems
from libs.datasets.stream import BatchStream
from libs.engine.distributed import Processes, select_device, start_processes
from libs.engine.evaluation import evaluate
from libs.engine.loop import LoopHooks, NonFiniteGuard, NonFiniteLoss, fit, format_value
from libs.engine.methods import get_method
from libs.engine.precision import Precision
from libs.engine.rng import rng_state, seed_everything, set_rng_state
from libs.engine.schedules import SCHEDULES, TEST_LOG, Schedule, get_schedule
from libs.io import atomic_write, file_sha256, log, progress_bar, setup_logging
from libs.metrics import SCORE_KEYS, class_table, format_all_scores, format_score_table, scores_to_json
from models.backbone import FrozenBatchNorm2d
from models.initialization import init_weights


@dataclass(frozen=True)
class RunOptions:
    """What the command line adds to the config (train.py's flags)."""
    schedule: str = "step1"
    experiment_id: str = "0"
    resume_from: int = 0
    init_model: Optional[str] = None      # overrides the config's init_model
    device: str = "auto"
    multigpus: bool = False
    ngpu: int = 0
    seed: Optional[int] = None            # overrides the config's seed
    max_iter: Optional[int] = None
    evaluate_only: bool = False
    eval_mode: Optional[str] = None       # overrides the config's eval_mode
    calibration: Optional[float] = None   # overrides the config's calibration
    amp: Optional[str] = None             # overrides the config's amp
    channels_last: Optional[bool] = None  # overrides the config's channels_last
    extend_to: Optional[int] = None       # with resume_from: the schedule's new ITER_MAX* (docs/method.md §8.5)
    skip_nonfinite: int = 0               # batches with a non-finite loss that may be skipped (0: stop at the first)
    check_data: str = "header"            # off | header | deep (libs/datasets/check.py)
    overwrite: bool = False               # replace the schedule's earlier checkpoints in this experiment
    command: Tuple[str, ...] = ()         # train.py's arguments, for run.json and the printed resume command


def experiment_dir(cfg: Config, experiment_id: str) -> str:
    return os.path.join(cfg["save_path"], cfg["dataset"], experiment_id)


# Keys a resume may change (docs/method.md §8.5): they decide what is printed, saved or tested and how fast data
# is read, never a training step's numbers (the test loader and evaluation draw from no training RNG).
RESUME_FREE_KEYS = ("display_interval", "log_interval", "snapshot", "NUM_WORKERS", "BATCH_SIZE.TEST", "eval_mode",
                    "calibration", "init_model")


def _flatten(data, prefix: str = "") -> Dict[str, object]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _free_keys(schedule: str) -> set:
    """RESUME_FREE_KEYS plus the other schedules' ITER_MAX* and learning rates, which this schedule never reads."""
    free = set(RESUME_FREE_KEYS)
    for other in SCHEDULES.values():
        if other.name != schedule:
            free.add(other.iter_max_key)
            free.update(other.lr_key(net) for net in ("back", "dis", "gen"))
    return free


def config_differences(saved: Config, given: Config, schedule: str) -> List[str]:
    """`key: saved -> given` for every training-relevant key on which the two configs differ."""
    a, b = _flatten(saved.to_dict()), _flatten(given.to_dict())
    free = _free_keys(schedule)

    def shown(values, key):
        return repr(values[key]) if key in values else "(absent)"
    return [f"{key}: {shown(a, key)} -> {shown(b, key)}" for key in list(a) + [k for k in b if k not in a]
            if key not in free and a.get(key) != b.get(key)]


def run_config(config_path: str, options: RunOptions) -> Config:
    """The config of this run: --config. On resume it must agree with the copy saved by the interrupted run on every
    key that changes training (the run's copy is what it was started with; `config_differences`)."""
    cfg = load_config(config_path)
    if options.resume_from > 0:
        schedule = get_schedule(options.schedule)
        copy = os.path.join(experiment_dir(cfg, options.experiment_id), schedule.config_copy)
        if not os.path.isfile(copy):
            raise FileNotFoundError(f"--resume_from {options.resume_from}: the run's config copy {copy} is missing")
        differences = config_differences(load_config(copy), cfg, schedule.name)
        if differences:
            hint = (f"; to train longer pass --extend_to N instead of a new {schedule.iter_max_key}"
                    if any(d.startswith(schedule.iter_max_key + ":") for d in differences) else "")
            raise ValueError(f"--resume_from {options.resume_from}: {config_path} differs from the run's config "
                             f"{copy} in {len(differences)} key(s) that change training (saved -> given):\n  "
                             + "\n  ".join(differences) + f"\nresume with the config the run was started with, or "
                             f"start a new --experimentid{hint}")
    return cfg


class Run:
    """Builds everything a run needs from a validated config, then trains (`train`) or evaluates (`evaluate`)."""

    def __init__(self, cfg: Config, options: RunOptions, config_path: Optional[str] = None):
        self.cfg = cfg
        self.options = options
        self.config_path = config_path or cfg.source
        self.schedule: Schedule = get_schedule(options.schedule)
        self.method = get_method(cfg["method"])
        if not options.evaluate_only:
            if self.method.schedules is not None and self.schedule.name not in self.method.schedules:
                raise ValueError(f"method {cfg['method']} trains with --schedule {', '.join(self.method.schedules)} "
                                 f"only, not --schedule {self.schedule.name} ({self.config_path})")
            check_schedule_keys(cfg, self.schedule.name, self.method.networks)
        self.processes: Processes = start_processes(options.multigpus, options.ngpu, options.device)
        self.device = select_device(options.device, self.processes, options.ngpu)
        self.exp_dir = experiment_dir(cfg, options.experiment_id)
        self.model_dir = os.path.join(self.exp_dir, self.schedule.model_dir)
        log_file = (os.path.join(cfg["save_path"], cfg["dataset"], TEST_LOG) if options.evaluate_only
                    else os.path.join(self.exp_dir, self.schedule.log_file))
        setup_logging(log_file if self.processes.is_main else None, quiet=not self.processes.is_main)
        # A resume continues the run as it was started (seed, amp, ...): its checkpoint says how (§8.5).
        self._resume_checkpoint = (read_checkpoint(self._checkpoint_path(options.resume_from))
                                   if options.resume_from > 0 else None)
        started = self._started_with(self._resume_checkpoint)
        if not options.evaluate_only:
            self.cfg = cfg = self._schedule_length(cfg, self._resume_checkpoint)
        self.seed = self._run_input("seed", options.seed, cfg.value("seed", 0), started)
        self.amp = self._run_input("amp", options.amp, cfg.value("amp", "off"), started)
        self.channels_last = self._run_input("channels_last", options.channels_last,
                                             cfg.value("channels_last", False), started)
        self.precision = Precision(self.amp, self.device.type)
        if self.amp == "fp16" and self.device.type == "cpu":
            log.warning("--amp fp16 on the CPU: correct but slow unless the CPU has AVX512-FP16/AMX-FP16; "
                        "--amp bf16 is the CPU's fast mode")
        seed_everything(self.seed)
        self.eval_mode = cfg["eval_mode"] if options.eval_mode is None else options.eval_mode
        self.calibration = cfg["calibration"] if options.calibration is None else options.calibration

        self.splits = load_class_splits(cfg["datadir"], cfg["dataset"], num_unseen=cfg["num_unseen"],
                                        out_dim_cls=cfg.value("dis.out_dim_cls"))
        self.model = self.method.build_model(cfg, self.splits)
        self.test_data = self._dataset("test", train=False, seed=0)
        self.init_model = options.init_model or cfg.value("init_model", "none")
        if self.init_model in (None, "none"):
            self.init_model = None
        # the schedule that wrote the init checkpoint (--val's JSON says whether a model is self-trained)
        self.init_schedule: Optional[str] = None
        if options.resume_from <= 0:
            init_weights(self.model, cfg["init"])
            if self.init_model is not None:
                self._load_init_model()
            elif options.evaluate_only or self.schedule.pseudo_labels:
                what = "--val" if options.evaluate_only else f"--schedule {self.schedule.name}"
                raise ValueError(f"{what} needs a model: pass --init_model (the config {self.config_path} has no "
                                 "init_model)")
        self.model.to(self.device)
        if self.channels_last:
            # NHWC convolutions (oneDNN on the CPU, cuDNN's tensor-core kernels): same maths, another memory
            # layout; pixel matrices (models/ops.py:to_pixels) become views.
            self.model.to(memory_format=torch.channels_last)

    # ---- building ---------------------------------------------------------------------------------------
    def _load_init_model(self) -> None:
        """Load --init_model / init_model. A checkpoint of another method is refused for --val and for the
        self-training schedules (they need this method's model); a training run takes what matches from it as
        init weights (non-strict, reported), e.g. an SPNet backbone for CaGNet's step 1."""
        path, method = self.init_model, self.cfg["method"]
        checkpoint = read_checkpoint(path)
        state = checkpoint.get("training_state") if isinstance(checkpoint, dict) else None
        self.init_schedule = state.get("schedule") if isinstance(state, dict) else None
        found = checkpoint_method(checkpoint)
        strict = None
        if found is not None and found != method:
            if self.options.evaluate_only or self.schedule.pseudo_labels:
                what = "--val" if self.options.evaluate_only else f"--schedule {self.schedule.name}"
                check_method(checkpoint, method, path, what)
            log.warning("--init_model %s is a %s checkpoint and this run trains %s: loading the weights that match "
                        "as init weights (non-strict)", path, found, method)
            strict = False
        purpose = "evaluate" if self.options.evaluate_only else "train"   # --val needs a complete model
        log.info(load_model_weights(self.model, checkpoint, path, strict=strict, purpose=purpose).summary())

    def _dataset(self, split: str, train: bool, seed: int, originals: bool = False) -> ZeroShotSegmentation:
        cfg = self.cfg
        mean = cfg["IMAGE"]["MEAN"]
        return ZeroShotSegmentation(
            cfg["ROOT"], load_split_list(cfg["datadir"], cfg["dataset"], split), self.splits, train=train,
            mean_bgr=(mean["B"], mean["G"], mean["R"]), crop_size=cfg.value("IMAGE.SIZE.TRAIN"),
            base_size=cfg.value("IMAGE.SIZE.BASE"), warp=cfg["WARP_IMAGE"], scale_range=cfg.value("SCALE_RANGE"),
            ignore_index=cfg.value("ignore_index"), seed=seed, originals=originals)

    def _workers(self) -> int:
        return min(self.cfg["NUM_WORKERS"], os.cpu_count() or 1)

    def _test_loader(self, save_colour: bool = False) -> torch.utils.data.DataLoader:
        """The test set in order; with several processes this process's share (`Processes.shard`). Items carry
        their originals (raw label at full size, image file) when eval_mode full or colour pictures need them."""
        originals = self.eval_mode == "full" or save_colour
        data = self._dataset("test", train=False, seed=0, originals=True) if originals else self.test_data
        sampler = self.processes.shard(len(data)) if self.processes.enabled else None
        return torch.utils.data.DataLoader(data, batch_size=self.cfg.value("BATCH_SIZE.TEST"), shuffle=False,
                                           sampler=sampler, num_workers=self._workers(),
                                           collate_fn=collate_test if originals else None,
                                           pin_memory=self.device.type == "cuda",
                                           # own generator: iterating the test loader at a snapshot must not draw
                                           # from the global torch RNG, whose state the checkpoint saved before the
                                           # test (docs/method.md §8.5)
                                           generator=torch.Generator())

    def _checkpoint_path(self, iteration: int) -> str:
        return os.path.join(self.model_dir, "%08d.pth" % iteration)

    # ---- save and restore of the whole run state ----------------------------------------------------------
    def run_record(self) -> dict:
        """Every input that defines the run beyond its config (plain types): a resume restores them."""
        return {"seed": self.seed, "amp": self.amp, "channels_last": self.channels_last,
                "world_size": self.processes.world_size, "init_model": self.init_model,
                "eval_mode": self.eval_mode, "calibration": self.calibration}

    def _schedule_length(self, cfg: Config, checkpoint) -> Config:
        """The config with this run's ITER_MAX*: --extend_to N; else, on resume, the length the checkpoint's config
        holds (a run extended before stays extended); else the config's own. Only the poly scheduler reads it."""
        key, options = self.schedule.iter_max_key, self.options
        own = cfg.value(key)
        length = own
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get("config"), dict):
            length = _flatten(checkpoint["config"]).get(key, own)
        if options.extend_to is not None:
            if options.extend_to <= max(length, options.resume_from):
                raise ValueError(f"--extend_to {options.extend_to}: the run is {length} iterations long and resumes "
                                 f"at {options.resume_from}; --extend_to must be larger (to stop earlier use "
                                 f"--max_iter)")
            length = options.extend_to
            log.info("--extend_to %d: %s %d -> %d; the poly rate continues from iteration %d towards 0 at %d "
                     "(docs/method.md §8.5)", length, key, own, length, options.resume_from, length)
        return cfg if length == own else cfg.updated({key: length})

    @staticmethod
    def _started_with(checkpoint) -> dict:
        state = checkpoint.get("training_state") if isinstance(checkpoint, dict) else None
        return dict(state.get("run", {})) if isinstance(state, dict) else {}

    def _run_input(self, key: str, given, default, started: dict):
        """A run-defining input: on resume the recorded one (a different explicit value is an error)."""
        if key not in started:
            return default if given is None else given
        if given is not None and given != started[key]:
            flag = f"--{key} {given}" if not isinstance(given, bool) else f"--{key}"
            raise ValueError(f"--resume_from {self.options.resume_from}: the run was started with {key} "
                             f"{started[key]!r}, not {flag}; resume without the flag (or with the same value)")
        return started[key]

    def save(self, iteration: int) -> None:
        """The checkpoint of `iteration`: the weights in the original layout, plus what an exact resume needs.
        Called on every rank: each rank's RNG state goes into the file rank 0 writes."""
        state_dict = self.model.state_dict()
        floating = [k for k, v in state_dict.items() if v.is_floating_point()]
        if not bool(torch.stack([torch.isfinite(state_dict[k]).all() for k in floating]).all()):
            bad = [k for k in floating if not bool(torch.isfinite(state_dict[k]).all())]
            raise NonFiniteLoss(f"iteration {iteration}: {len(bad)} weight tensor(s) hold NaN or inf ("
                                f"{', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}); checkpoint not saved, the "
                                f"last good one is kept (lower the learning rate)")
        rng_ranks = self.processes.gather_objects(rng_state(self.device))
        if not self.processes.is_main:
            return
        state = {"trainer": self.trainer.state_dict(), "stream": self.stream.state_dict(), "rng": rng_ranks[0],
                 "rng_ranks": rng_ranks, "run": self.run_record(), "schedule": self.schedule.name}
        path = self._checkpoint_path(iteration)
        save_checkpoint(snapshot(self.model, iteration, state, self.cfg.to_dict(), method=self.cfg["method"]),
                        path, keep_last=self.cfg.value("keep_last", 0))
        log.info("saved %s", path)

    def restore(self, iteration: int) -> int:
        """Load the checkpoint of `iteration` into the model, trainer, data stream and RNGs; returns the
        iteration to continue from."""
        path = self._checkpoint_path(iteration)
        checkpoint = self._resume_checkpoint if self._resume_checkpoint is not None else read_checkpoint(path)
        self._resume_checkpoint = None
        check_method(checkpoint, self.cfg["method"], path, f"--resume_from {iteration}")
        log.info(load_model_weights(self.model, checkpoint, path).summary())
        start = int(checkpoint["iteration"])
        state = checkpoint.get("training_state")
        if state is None:
            self.trainer.restart_schedules_at(start)
            log.warning("%s holds no training state: optimizer moments and data order restart", path)
            return start
        saved_schedule = state.get("schedule", self.schedule.name)
        if saved_schedule != self.schedule.name:
            raise ValueError(f"{path} was written by --schedule {saved_schedule}, not {self.schedule.name}; "
                             f"resume it with --schedule {saved_schedule}")
        trainer_state = dict(state["trainer"])
        if "num_pixels" in state:       # checkpoints written before the trainer kept it in its own state
            trainer_state.setdefault("num_pixels", state["num_pixels"])
        self.trainer.load_state_dict(trainer_state)
        self.stream.load_state_dict(state["stream"])
        set_rng_state(self._rank_rng_state(state, path), self.device)
        return start

    def _rank_rng_state(self, state: dict, path: str) -> dict:
        """This rank's saved RNG state. The ranks keep their generators in the same state (models/shard.py), so
        a run may resume with another number of processes; the states are compared to be sure."""
        ranks = state.get("rng_ranks") or [state["rng"]]
        world, rank = self.processes.world_size, self.processes.rank
        if len(ranks) == world:
            return ranks[rank]
        if any(not torch.equal(r["torch"], ranks[0]["torch"]) for r in ranks):
            raise ValueError(f"{path} was written by {len(ranks)} processes whose RNG states differ; resume it with "
                             f"{len(ranks)} processes")
        return ranks[0]

    # ---- evaluation ----------------------------------------------------------------------------------------
    def test_scores(self, loader, predictions_dir: Optional[str] = None, progress=None,
                    save_colour: bool = False) -> dict:
        """The test set under this run's evaluation protocol (eval_mode, calibration); with several processes
        each scores its share and the confusion matrices are summed, so every process gets the same scores."""
        return evaluate(self.model, loader, self.splits, self.device, mode=self.eval_mode,
                        calibration=self.calibration, predictions_dir=predictions_dir, progress=progress,
                        save_colour=save_colour,
                        all_reduce=self.processes.all_reduce_sum if self.processes.enabled else None,
                        autocast=self.precision.autocast)

    def evaluation_name(self) -> str:
        text = f"eval_mode {self.eval_mode}"
        return text + (f", calibration {self.calibration:g}" if self.calibration else "")

    def evaluate(self, results_json: Optional[str] = None, predictions_dir: Optional[str] = None,
                 save_colour: bool = False) -> dict:
        """--val: the test set once (sharded over the processes under torchrun); the paper's table and all 16
        scores in the log, the scores as JSON and the per-class values as CSV beside it (`class_csv_path`)."""
        finished = False
        try:
            self.check_data(("test",))
            scores = self.test_scores(self._test_loader(save_colour), predictions_dir,
                                      progress_bar("test") if self.processes.is_main else None, save_colour)
            finished = True
        finally:
            self.processes.close(finished)
        names = self.splits.test_names
        log.info("%s\n%s\n\n%s", f"Test results of {self.init_model} ({self.evaluation_name()}):",
                 format_score_table({self.cfg["method"]: scores}, names), format_all_scores(scores))
        if not self.processes.is_main:
            return scores
        results = results_json or os.path.join(self.exp_dir, self.results_name())
        if results_json is None and os.path.isfile(results):
            log.warning("replacing %s (the scores of the same checkpoint and protocol)", results)
        os.makedirs(os.path.dirname(os.path.abspath(results)), exist_ok=True)
        record = {"method": self.cfg["method"], "dataset": self.cfg["dataset"], "eval_mode": self.eval_mode,
                  "calibration": self.calibration, "checkpoint": self.init_model,
                  # the --schedule that wrote the checkpoint (null for files without training state, e.g. the
                  # released models): st / st_mixed mark self-trained rows (tools/paper_table.py)
                  "schedule": self.init_schedule,
                  # "model" is the checkpoint too, under the name earlier versions wrote
                  "model": self.init_model, "config": self.config_path,
                  "checkpoint_sha256": _sha256(self.init_model) if self.init_model else None}
        with open(results, "w") as handle:
            json.dump({**record, **scores_to_json(scores, names, all_scores=True)}, handle, indent=2)
        write_class_csv(class_csv_path(results), class_table(scores["confusion"], self.splits.num_seen, names))
        log.info("scores written to %s (%s), per-class values to %s", results, self.evaluation_name(),
                 class_csv_path(results))
        return scores

    def results_name(self) -> str:
        """--val's default results file, named after the checkpoint and the protocol, so that evaluating another
        checkpoint never replaces earlier scores: results_val_<checkpoint>[_<eval_mode>][_cal<gamma>].json, where
        <checkpoint> is the file's stem, prefixed by its folder for our numbered snapshots
        (results_val_models_transfer_00000008.json)."""
        stem = os.path.splitext(os.path.basename(self.init_model))[0]
        if stem.isdigit():
            stem = f"{os.path.basename(os.path.dirname(os.path.abspath(self.init_model)))}_{stem}"
        mode = "" if self.eval_mode == "feature" else f"_{self.eval_mode}"
        calibration = f"_cal{self.calibration:g}" if self.calibration else ""
        return f"results_val_{stem}{mode}{calibration}.json"

    def check_data(self, splits: Sequence[str]) -> None:
        """Every listed file of the splits exists and decodes (--check_data, libs/datasets/check.py); one error
        naming the files and counting the missing ones."""
        mode = self.options.check_data
        if mode == "off":
            return
        cfg = self.cfg
        for split in splits:
            entries = load_split_list(cfg["datadir"], cfg["dataset"], split)
            problems = check_entries(cfg["ROOT"], entries, len(self.splits.raw_names), deep=mode == "deep")
            if problems:
                what = (f"the {split} list of {cfg['dataset']} ({len(entries)} entries under {cfg['ROOT']}, "
                        f"--check_data {mode})")
                raise ValueError(describe_problems(problems, what))

    # ---- training ------------------------------------------------------------------------------------------
    def _refuse_overwrite(self) -> None:
        """A new run of a schedule never silently replaces that schedule's checkpoints in this experiment: it
        needs --resume_from, another --experimentid, or --overwrite (which deletes them first)."""
        if self.options.resume_from > 0 or not os.path.isdir(self.model_dir):
            return
        # our numbered snapshots only: a killed save's hidden temporary is no checkpoint (prepare_snapshot_dir
        # removes it)
        old = sorted(f for f in os.listdir(self.model_dir) if f.endswith(".pth") and not f.startswith("."))
        if not old:
            return
        if not self.options.overwrite:
            last = max((f for f in old if f[:-4].isdigit()), default=None)
            resume = f" resume with --resume_from {int(last[:-4])}," if last else ""
            raise ValueError(f"{self.model_dir} already holds {len(old)} checkpoint(s) of --schedule "
                             f"{self.schedule.name} ({old[0]} ... {old[-1]});{resume} use another --experimentid, "
                             f"or pass --overwrite to delete them and start again")
        if self.processes.is_main:
            for name in old:
                os.remove(os.path.join(self.model_dir, name))
            log.warning("--overwrite: deleted %d earlier checkpoint(s) in %s", len(old), self.model_dir)

    def write_run_record(self, start: int, max_iter: int) -> None:
        """Append this invocation to <experiment>/run<suffix>.json (run.json for step1): what started it and on
        what, so that a result can be traced to its command, inputs and software."""
        path = os.path.join(self.exp_dir, f"run{self.schedule.suffix}.json")
        runs = []
        if os.path.isfile(path):
            try:
                with open(path) as handle:
                    runs = list(json.load(handle).get("runs", []))
            except (OSError, ValueError, AttributeError):
                log.warning("%s is not a run record; starting a new one", path)
        init = self.init_model if self.options.resume_from <= 0 else None
        resumed = self._checkpoint_path(self.options.resume_from) if self.options.resume_from > 0 else None
        record = {
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join(["python", "train.py", *self.options.command]), "argv": list(self.options.command),
            "method": self.cfg["method"], "schedule": self.schedule.name, "config": self.config_path,
            "seed": self.seed, "amp": self.amp, "channels_last": self.channels_last,
            "start_iteration": start, "max_iter": max_iter,
            "init_model": init, "init_model_sha256": _sha256(init) if init else None,
            "resumed_from": resumed, "resumed_from_sha256": _sha256(resumed) if resumed else None,
            "device": _device_name(self.device), "world_size": self.processes.world_size,
            "git_commit": _git_commit(), "packages": _package_versions(), "python": platform.python_version(),
        }
        runs.append(record)
        atomic_write(path, lambda handle: json.dump({"runs": runs}, handle, indent=2), binary=False)

    def train(self) -> int:
        """Train the schedule; returns train.py's exit status: 0, or 128 + the signal number when SIGINT/SIGTERM
        stopped the run (its state saved, the resume command printed)."""
        cfg, options = self.cfg, self.options
        processes = self.processes
        self._refuse_overwrite()
        self.check_data(("train", "test"))
        if processes.is_main:   # writable, and no temporary files of a killed save (before any work)
            prepare_snapshot_dir(self.model_dir)
        train_data = self._dataset("train", train=True, seed=self.seed)
        self.stream = BatchStream(train_data, self.method.stream_batch_size(cfg), self._workers(), self.seed,
                                  pin_memory=self.device.type == "cuda", rank=processes.rank,
                                  world_size=processes.world_size)
        self.trainer = self.method.from_config(cfg, self.model, self.splits, self.schedule,
                                               processes.data_parallel(self.device), self.precision)
        start = 0
        calibration = cfg.value("back.bn_calibration_batches", 0)
        if options.resume_from > 0:
            start = self.restore(options.resume_from)
        elif calibration > 0 and self.init_model is None:
            self._calibrate_batchnorm(calibration, train_data)
        elif calibration > 0:
            log.info("back.bn_calibration_batches ignored: the BatchNorm statistics come from %s", self.init_model)
        if processes.is_main and options.resume_from <= 0:
            os.makedirs(self.exp_dir, exist_ok=True)
            save_config(cfg, os.path.join(self.exp_dir, self.schedule.config_copy))
        full = iter_max(cfg, self.schedule.name)
        max_iter = full if options.max_iter is None else min(options.max_iter, full)
        if processes.is_main:
            self.write_run_record(start, max_iter)
        self.guard = NonFiniteGuard(options.skip_nonfinite)
        hooks = _RunHooks(self, start, max_iter)
        finished = False
        try:
            with StopRequests() as requests:
                hooks.requests = requests
                stopped = fit(self.trainer, self.stream, hooks, start=start, max_iter=max_iter,
                              snapshot=cfg["snapshot"], display_interval=cfg["display_interval"],
                              log_interval=cfg["log_interval"], device=self.device, guard=self.guard)
            finished = True
        finally:
            hooks.close()
            processes.close(finished)
        if self.guard.skipped:
            log.warning("skipped %d batch(es) with a non-finite loss (the last at %s); --skip_nonfinite %d",
                        self.guard.skipped, self.guard.last, options.skip_nonfinite)
        if stopped is None:
            return 0
        name = signal.Signals(requests.signum).name if requests.signum else "a stop request"
        if stopped > 0 and (stopped > start or options.resume_from > 0):
            log.warning("%s: stopped at iteration %d, its state saved in %s; resume with:\n  %s", name, stopped,
                        self._checkpoint_path(stopped), resume_command(options.command, stopped,
                                                                       processes.world_size))
        else:
            log.warning("%s: stopped before the first iteration; nothing to resume, start the run again", name)
        return 128 + (requests.signum or signal.SIGTERM)

    @torch.no_grad()
    def _calibrate_batchnorm(self, batches: int, train_data) -> None:
        """Frozen BatchNorm statistics of a from-scratch backbone from the first (global) training batches;
        training still starts at the first batch of the epoch. Every rank computes them from the whole global
        batches, so every rank gets the one-process statistics."""
        stream = BatchStream(train_data, self.cfg.value("BATCH_SIZE.TRAIN"), self._workers(), self.seed)
        with FrozenBatchNorm2d.calibrating(self.model):
            for _ in range(batches):
                self.model.calibration_forward(stream.next()[0].to(self.device))
        log.info("estimated the frozen BatchNorm statistics from %d training batches", batches)


def class_csv_path(results_json: str) -> str:
    """The per-class CSV beside a results JSON: `<name>_classes.csv`."""
    return os.path.splitext(results_json)[0] + "_classes.csv"


CLASS_CSV_COLUMNS = ("test_id", "class", "split", "IoU", "accuracy", "gt_pixels", "predicted_pixels")


def write_class_csv(path: str, rows) -> None:
    """`class_table` rows as CSV (NaN written as `nan`)."""
    def write(handle):
        out = csv.DictWriter(handle, fieldnames=CLASS_CSV_COLUMNS, lineterminator="\n")
        out.writeheader()
        for row in rows:
            out.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write(path, write, binary=False)


class _RunHooks(LoopHooks):
    """The run's side of the loop: log lines, TensorBoard scalars, progress bar, checkpoints, test runs."""

    def __init__(self, run: Run, start: int, max_iter: int):
        self.run = run
        self.main = run.processes.is_main
        self.schedule = run.schedule.name
        self.max_iter = max_iter
        self.writer = None
        self.bar = None
        self.said_undefined = False
        self.requests: Optional[StopRequests] = None
        self.loader = run._test_loader()     # this process's share of the test set
        self.console_filters = []
        for handler in log.handlers:        # display_interval lines go to the console only (see `losses`)
            if isinstance(handler, logging.FileHandler):
                handler.addFilter(_skip_console_only)
                self.console_filters.append(handler)
        if self.main:
            from tensorboardX import SummaryWriter
            self.writer = SummaryWriter(os.path.join(run.exp_dir, "tensorboard", self.schedule))
            self.bar = progress_bar(self.schedule)(total=max_iter, initial=start)

    def learning_rates(self, iteration: int, rates: Dict[str, float]) -> None:
        log.info("iteration %d: lr %s", iteration, ", ".join(f"{net} {lr:.3g}" for net, lr in rates.items()))

    def progress(self, iteration: int) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def losses(self, iteration: int, phase: str, means: Dict[str, float], to_log_file: bool) -> None:
        """Faithful to the original: the running means are printed every display_interval iterations and appended
        to the log file every log_interval; a NaN or inf is printed as `nan` / `inf`, never dropped."""
        skipped = self.run.guard.skipped
        line = (f"[{self.schedule} {phase}] iter {iteration}/{self.max_iter} "
                + " ".join(f"{k} {format_value(v)}" for k, v in means.items())
                + (f" skipped_nonfinite {skipped}" if skipped else ""))
        log.info(line, extra={} if to_log_file else {CONSOLE_ONLY: True})
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.3f}" for k, v in means.items() if k in ("cls_real", "cls_fake", "KLD")})
        if self.writer is not None:
            for k, v in means.items():
                self.writer.add_scalar(f"{phase}/{k}", v, iteration)
            for net, lr in self.run.trainer.learning_rates().items():
                self.writer.add_scalar(f"lr/{net}", lr, iteration)

    def snapshot(self, iteration: int) -> None:
        self.run.save(iteration)

    def stop(self, iteration: int) -> bool:
        """A SIGINT/SIGTERM arrived (on any rank: with several processes one tiny all-reduce per iteration, so all
        ranks stop at the same iteration)."""
        requested = self.requests is not None and self.requests.signum is not None
        if not self.run.processes.enabled:
            return requested
        flag = torch.tensor([1.0 if requested else 0.0], device=self.run.device)
        return bool(self.run.processes.all_reduce_sum(flag).item() > 0)

    def test(self, iteration: int) -> None:
        """Every process scores its share of the test set; the summed confusion gives all of them the scores,
        rank 0 logs them (all 16) and writes them to TensorBoard."""
        run = self.run
        scores = run.test_scores(self.loader, progress=progress_bar("test", leave=False) if self.main else None)
        if not self.main:
            return
        lines = [f"Test results: {run.evaluation_name()}"] + [f"{k}: {scores[k]:.4f}" for k in SCORE_KEYS]
        log.info("\n".join(lines) + "\n" + json.dumps(scores_to_json(scores, run.splits.test_names)["class_iou"]))
        undefined = [k for k in SCORE_KEYS if not math.isfinite(scores[k])]
        if undefined and not self.said_undefined:
            # e.g. U-mIoU of a test set without unseen pixels (a mean over no class, as the original's nanmean);
            # TensorBoard would only warn "NaN or Inf found in input tensor." without saying which or why
            log.info("%s: nan, no test pixel of the classes averaged; not written to TensorBoard", ", ".join(undefined))
            self.said_undefined = True
        for k in SCORE_KEYS:
            if k not in undefined:
                self.writer.add_scalar(f"test/{k}", scores[k], iteration)

    def close(self) -> None:
        for handler in self.console_filters:
            handler.removeFilter(_skip_console_only)
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


CONSOLE_ONLY = "console_only"     # a log record's extra flag: not for the log file


def _skip_console_only(record: logging.LogRecord) -> bool:
    return not getattr(record, CONSOLE_ONLY, False)


class StopRequests:
    """SIGINT/SIGTERM handlers for the training loop: the first signal asks the loop to save and stop at the next
    iteration boundary; a second one exits at once (SystemExit 128 + signal: an unfinished atomic save removes its
    temporary file). The previous handlers come back on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: Optional[int] = None
        self.previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise SystemExit(128 + signum)
        self.signum = signum
        # os.write is safe in a signal handler (the logger's locks may be held by the interrupted code)
        os.write(2, f"\n{signal.Signals(signum).name}: saving a checkpoint at the next iteration boundary, then "
                    f"stopping; send it again to exit at once\n".encode())

    def __enter__(self) -> "StopRequests":
        for sig in self.SIGNALS:
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:      # not the main thread (an embedding program's worker thread): no handlers
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


# flags a resume command drops: the resume sets them itself, or they do not apply to a resumed run
_NOT_RESUMED = {"--resume_from": 1, "--overwrite": 0, "--init_model": 1, "--extend_to": 1}


def resume_command(argv: Sequence[str], iteration: int, world_size: int = 1) -> str:
    """The command line that resumes this run at `iteration`: its own arguments without --resume_from, --overwrite,
    --init_model and --extend_to (the checkpoint holds what they set), plus --resume_from <iteration>."""
    kept, skip = [], 0
    for arg in argv:
        if skip:
            skip -= 1
            continue
        flag = arg.split("=", 1)[0]
        if flag in _NOT_RESUMED:
            skip = 0 if "=" in arg else _NOT_RESUMED[flag]
            continue
        kept.append(arg)
    start = ["python"] if world_size == 1 else ["torchrun", "--nproc_per_node", str(world_size)]
    return shlex.join([*start, "train.py", *kept, "--resume_from", str(iteration)])


def _sha256(path: str) -> Optional[str]:
    """libs.io.file_sha256 (cached: a file hashed at loading is not read again), None for a path that is no file."""
    return file_sha256(path) if os.path.isfile(path) else None


def _git_commit() -> Optional[str]:
    """HEAD of the code's git repository (with `+dirty` for uncommitted changes), None outside one."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _package_versions() -> Dict[str, Optional[str]]:
    from importlib import metadata
    out = {}
    for name in ("torch", "numpy", "opencv-python", "opencv-python-headless", "pillow", "pyyaml", "tensorboardX"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
