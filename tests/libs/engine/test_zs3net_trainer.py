"""ZS3Net's trainer (libs/engine/trainers/zs3net.py) on a tiny model: per-class generator steps, the classifier
batch (n_u), no unseen label used, a frozen backbone in stage 2, stage 1 / st updates."""
import copy

import pytest
import torch

from libs.engine.precision import Precision
from libs.engine.schedules import get_schedule
from libs.engine.trainers.cagnet import backbone_optimizer
from libs.engine.trainers.zs3net import STAGES, ZS3NetTrainer, unseen_count
from libs.optimizers import make_optimizer
from libs.schedulers import build_scheduler
from models.ops import nearest_resize
from tests.models.test_zs3net import tiny_zs3net

S, U = 3, 2


def make_trainer(schedule="mixed", model=None, rate=1.0, samples=16, percent=50.0):
    model = model or tiny_zs3net(S, U)
    groups = model.param_groups()
    optimizers = {"back": backbone_optimizer(model, "sgd", 0.01, 5e-4),
                  "dis": make_optimizer("sgd", [{"params": groups["dis"]}], 0.07, 5e-4),
                  "gen": make_optimizer("adam", [{"params": groups["gen"]}], 2e-4, 0.0)}
    schedulers = {k: build_scheduler(o, "poly", init_lr=o.param_groups[0]["lr"], max_iter=10)
                  for k, o in optimizers.items()}
    return ZS3NetTrainer(model, optimizers, schedulers, stage=STAGES[schedule], num_seen=S, num_unseen=U,
                         unseen_rate=rate, sigmas=(2, 5, 10, 20, 40, 80), mmd_samples=samples, percent=percent,
                         schedule=get_schedule(schedule))


def batch(seed=0, n=2, size=33):
    """Images and train-id labels with seen classes 0..2 and ignore; the label's lower-right block is an
    'unseen object' given as ignore (what the loader writes)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g)
    labels = torch.full((n, size, size), 255, dtype=torch.long)
    labels[0, :16, :16] = 0
    labels[0, :16, 16:] = 1
    labels[1, :16, :] = 2
    return images, labels


def test_unseen_count_formula():
    assert unseen_count(100, 15, 9) == 70           # (1 + 9) * ceil(100 / 15)
    assert unseen_count(30, 3, 0) == 10
    assert unseen_count(31, 3, 1.5) == 28           # 2.5 * 11 = 27.5 -> 28


def test_one_generator_step_per_image_and_seen_class():
    trainer = make_trainer()
    images, labels = batch()
    x, y = trainer.real_features(images, labels)
    steps, mmd = trainer.generator_steps(x, y)
    assert steps == 3                                 # image 0: classes 0, 1; image 1: class 2
    state = trainer.optimizers["gen"].state_dict()["state"]
    assert all(int(s["step"]) == 3 for s in state.values())
    assert mmd > 0


def test_classifier_batch_composition():
    trainer = make_trainer(rate=1.0)
    images, labels = batch()
    x, y = trainer.real_features(images, labels)
    feats, targets, n_u = trainer.classifier_batch(x, y)
    visible = int((y != 255).sum())
    assert n_u == 2 * -(-visible // S)
    assert feats.shape == (visible + U * n_u, x.shape[1])
    assert torch.equal(targets[:visible], y[y != 255])
    counts = torch.bincount(targets[visible:], minlength=S + U)
    assert counts[:S].tolist() == [0] * S and counts[S:].tolist() == [n_u] * U


def _trained(trainer_fn, labels):
    torch.manual_seed(3)
    trainer = trainer_fn()
    images, _ = batch()
    out = trainer.step(trainer.phase(0), (images, labels))
    return trainer.model.state_dict(), out


@pytest.mark.parametrize("schedule", ["step1", "mixed", "st", "st_mixed"])
def test_unseen_ground_truth_is_never_read(schedule):
    """The same batch with the unseen object given as ignore (the loader's labels) or as its unseen test id:
    every weight comes out identical, so no unseen label reaches any loss."""
    images, labels = batch()
    with_unseen = labels.clone()
    with_unseen[0, 20:, 20:] = S + 1                  # an unseen object's true test id
    with_unseen[1, 20:, :10] = S
    model = tiny_zs3net(S, U)
    a, out_a = _trained(lambda: make_trainer(schedule, copy.deepcopy(model)), labels)
    b, out_b = _trained(lambda: make_trainer(schedule, copy.deepcopy(model)), with_unseen)
    assert out_a is not None
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_stage2_leaves_the_backbone_unchanged_and_trains_generator_and_classifier():
    trainer = make_trainer("mixed")
    before = copy.deepcopy(trainer.model.state_dict())
    values = trainer.step("step2", batch())
    after = trainer.model.state_dict()
    for key in before:
        same = torch.equal(before[key], after[key])
        if key.startswith("back.") or key.startswith("Em_"):
            assert same, key
        elif key.startswith("gen.") or key.startswith("cls."):
            assert not same, key
    assert values["gen_steps"].item() == 3 and values["n_unseen"].item() > 0
    assert trainer.phase(5) == "step2"


def test_stage1_trains_backbone_and_classifier_not_the_generator():
    trainer = make_trainer("step1")
    before = copy.deepcopy(trainer.model.state_dict())
    values = trainer.step("step1", batch())
    after = trainer.model.state_dict()
    assert not torch.equal(before["back.scale.backbone.aspp.stages.c0.weight"],
                           after["back.scale.backbone.aspp.stages.c0.weight"])
    assert not torch.equal(before["cls.weight"], after["cls.weight"])
    assert torch.equal(before["gen.fc1.weight"], after["gen.fc1.weight"])
    assert values["cls_real"] > 0


def test_st_targets_include_the_pseudo_labels():
    """Under st the classifier learns the unseen class the model predicts on ignored pixels."""
    model = tiny_zs3net(S, U)
    with torch.no_grad():                                # make unseen class 3 win everywhere
        model.cls.bias[:] = torch.tensor([0.0, 0.0, 0.0, 50.0, 0.0])
    trainer = make_trainer("st", model, percent=100.0)
    images, labels = batch()
    y = nearest_resize(labels, model.feature_shape(*images.shape[-2:]))
    model.eval()
    pseudo = trainer.pseudo_labels(y, model.predict(images))
    assert ((pseudo == 3) == (y == 255)).all()
    assert trainer.step("step1", (images, labels)) is not None


def test_batch_without_seen_pixels_is_skipped():
    trainer = make_trainer("mixed")
    images, labels = batch()
    assert trainer.step("step2", (images, torch.full_like(labels, 255))) is None
    assert all(not s for s in trainer.optimizers["dis"].state_dict()["state"].values())


def test_several_processes_are_refused():
    model = tiny_zs3net(S, U)
    with pytest.raises(ValueError, match="one process only"):
        ZS3NetTrainer(model, {}, {}, stage=STAGES["step1"], num_seen=S, num_unseen=U, unseen_rate=0, sigmas=(2,),
                      parallel=object())


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("schedule", ["step1", "mixed"])
def test_mixed_precision_steps_are_finite_and_train(amp, schedule):
    """Every backward/step goes through the base trainer's routing: autocast, and fp16's scaler (which updates
    after each generator step, since each is an optimizer step of its own)."""
    trainer = make_trainer(schedule)
    trainer.precision = Precision(amp, "cpu")
    before = copy.deepcopy(trainer.model.state_dict())
    values = trainer.step(trainer.phase(0), batch())
    assert all(torch.isfinite(v).all() for v in values.values())
    assert not torch.equal(before["cls.weight"], trainer.model.cls.weight)


def test_bad_zs3_values_are_clear_errors():
    model = tiny_zs3net(S, U)
    opts = make_trainer(model=model)
    with pytest.raises(ValueError, match="zs3_mmd_sigmas"):
        ZS3NetTrainer(model, opts.optimizers, opts.schedulers, stage=STAGES["mixed"], num_seen=S, num_unseen=U,
                      unseen_rate=0, sigmas=(2, 0))
    with pytest.raises(ValueError, match="zs3_pseudo_label_percent"):
        ZS3NetTrainer(model, opts.optimizers, opts.schedulers, stage=STAGES["st"], num_seen=S, num_unseen=U,
                      unseen_rate=0, sigmas=(2,), percent=0)
