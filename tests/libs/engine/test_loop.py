"""The loop's early ends (docs/method.md §8.8) on a scripted trainer: the non-finite guard (stop, skip budget), a
stop request at an iteration boundary, the log's number format, the resume command and the signal handlers."""
import math
import os
import signal

import pytest
import torch

from libs.engine.loop import LoopHooks, NonFiniteGuard, NonFiniteLoss, fit, format_value
from libs.engine.run import StopRequests, config_differences, resume_command
from tests.e2e_config import ROOT


class ScriptedTrainer:
    """Returns the scripted losses in turn, through the guard as the real trainers do (before any update)."""

    def __init__(self, losses):
        self.losses, self.calls, self.updates = list(losses), 0, 0
        self.nonfinite_guard = None

    def learning_rates(self):
        return {"dis": 0.1}

    def phase(self, it):
        return "step1"

    def needs_batch(self, phase):
        return False

    def step(self, phase, batch):
        value = self.losses[self.calls % len(self.losses)]
        self.calls += 1
        values = {"cls": torch.tensor(value), "acc": torch.tensor(0.5)}
        if not self.nonfinite_guard(values):
            return None
        self.updates += 1
        return values


class Hooks(LoopHooks):
    def __init__(self, stop_at=None):
        self.saved, self.lines, self.stop_at = [], [], stop_at

    def losses(self, iteration, phase, means, to_log_file):
        self.lines.append((iteration, means))

    def snapshot(self, iteration):
        self.saved.append(iteration)

    def stop(self, iteration):
        return self.stop_at is not None and iteration >= self.stop_at


def run_fit(trainer, hooks, guard=None, max_iter=6):
    return fit(trainer, None, hooks, start=0, max_iter=max_iter, snapshot=4, display_interval=1, log_interval=2,
               device=torch.device("cpu"), guard=guard)


def test_a_non_finite_loss_stops_before_its_update_and_names_the_loss_and_iteration():
    trainer, hooks = ScriptedTrainer([1.0, 1.0, 1.0, float("nan")]), Hooks()
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at iteration 4: cls nan; stopped without saving"):
        run_fit(trainer, hooks)
    assert trainer.updates == 3 and hooks.saved == [] and [it for it, _ in hooks.lines] == [1, 2, 3]


def test_skip_budget_skips_without_advancing_then_stops():
    trainer, hooks = ScriptedTrainer([1.0, float("inf"), 2.0]), Hooks()
    guard = NonFiniteGuard(budget=2)
    with pytest.raises(NonFiniteLoss, match="the budget of --skip_nonfinite 2 is spent"):
        run_fit(trainer, hooks, guard)
    # calls: 1 ok, inf skipped, 2 ok, 1 ok, inf skipped, 2 ok (iteration 4: snapshot), 1 ok, inf -> stop
    assert guard.skipped == 2 and trainer.updates == 5 and hooks.saved == [4]
    assert guard.last.startswith("iteration 4: cls inf")
    trainer, guard = ScriptedTrainer([1.0, float("inf"), 2.0]), NonFiniteGuard(budget=10)
    assert run_fit(trainer, Hooks(), guard) is None and guard.skipped == 3 and trainer.updates == 6


def test_a_stop_request_saves_at_the_next_boundary_once():
    hooks = Hooks(stop_at=2)
    assert run_fit(ScriptedTrainer([1.0]), hooks) == 2 and hooks.saved == [2]
    hooks = Hooks(stop_at=4)             # iteration 4 is a snapshot: saved once, not twice
    assert run_fit(ScriptedTrainer([1.0]), hooks) == 4 and hooks.saved == [4]


def test_log_numbers_keep_nan_and_inf():
    assert format_value(0.12345) == "0.1235"
    assert [format_value(v) for v in (math.nan, math.inf, -math.inf)] == ["nan", "inf", "-inf"]


def test_resume_command_drops_what_the_checkpoint_sets():
    argv = ["--config", "c.yaml", "--overwrite", "--resume_from=3", "--init_model", "a.pth", "--extend_to", "9",
            "--seed", "1", "--experimentid", "my run"]
    assert resume_command(argv, 7) == ("python train.py --config c.yaml --seed 1 --experimentid 'my run' "
                                       "--resume_from 7")
    assert resume_command(["--multigpus", "--ngpu", "2"], 5, world_size=2) == (
        "torchrun --nproc_per_node 2 train.py --multigpus --ngpu 2 --resume_from 5")


def test_second_signal_exits_at_once():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequests() as requests:
        os.kill(os.getpid(), signal.SIGTERM)
        assert requests.signum == signal.SIGTERM
        with pytest.raises(SystemExit) as exit_:
            os.kill(os.getpid(), signal.SIGINT)
        assert exit_.value.code == 130
    assert signal.getsignal(signal.SIGTERM) is before


def test_config_differences_list_training_keys_only():
    from libs.config import load_config
    cfg = load_config(os.path.join(ROOT, "configs", "voc12.yaml"))
    other = cfg.updated({"ITER_MAX": 5, "display_interval": 3, "ITER_MAX_TRANSFER": 9, "gen_opt.lr": 1.0})
    assert sorted(config_differences(cfg, other, "step1")) == [
        f"ITER_MAX: {cfg['ITER_MAX']!r} -> 5", f"gen_opt.lr: {cfg.value('gen_opt.lr')!r} -> 1.0"]
    # the other schedules' ITER_MAX* and learning rates are not read by mixed: only its own length counts
    assert config_differences(cfg, other, "mixed") == ["ITER_MAX_TRANSFER: (absent) -> 9"]
