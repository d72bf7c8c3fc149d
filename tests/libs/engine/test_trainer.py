"""CaGNet's trainer: parameter groups, gradient routing, the steps of each kind, evaluation, BN calibration."""
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from libs.config import load_config
from libs.datasets import ZeroShotSegmentation, load_class_splits, load_split_list
from libs.engine.evaluation import evaluate
from libs.engine.schedules import get_schedule
from libs.engine.trainers.cagnet import CaGNetTrainer, LossWeights, backbone_optimizer
from libs.losses import classification_loss, discriminator_gan_loss, generator_gan_loss, mmd_content_loss
from libs.optimizers import make_optimizer
from libs.schedulers import build_scheduler
from models.backbone import FrozenBatchNorm2d
from models.cagnet import build_cagnet
from models.ops import nearest_resize
from tests.datagen import write_dataset
from tests.e2e_config import ROOT


def make_trainer(model, lr=1e-3, update_back=True, weights=None, **kwargs):
    optimizers = {"back": backbone_optimizer(model, "sgd", lr, 5e-4),
                  "dis": make_optimizer("adam", [{"params": list(model.dis.parameters())}], lr, 5e-4),
                  "gen": make_optimizer("adam", [{"params": list(model.gen.parameters())}], lr, 0.0)}
    schedulers = {k: build_scheduler(o, "constant", init_lr=lr) for k, o in optimizers.items()}
    return CaGNetTrainer(model, optimizers, schedulers, weights or LossWeights(D_cls_fake=0.25, G_cls=0.5),
                   num_seen=3, num_unseen=2, unseen_rate=9.0, update_back=update_back, top_p=2, **kwargs)


def batch(seed=0, n=2, size=64):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g)
    labels = torch.randint(0, 3, (n, size, size), generator=g)
    labels[:, :, :16] = 255
    return images, labels


def test_backbone_groups_match_spec_on_full_model():
    with torch.device("meta"):
        model = build_cagnet(torch.zeros(256, 600), torch.zeros(20, 600), 21)
    groups = {k: v for k, v in model.param_groups().items() if k not in ("dis", "gen")}
    assert [len(groups[k]) for k in ("resnet", "contextual", "aspp_weight", "aspp_bias")] == [104, 6, 4, 4]
    sizes = {k: sum(p.numel() for p in v) for k, v in groups.items()}
    assert sizes["resnet"] == 42_394_816
    assert sizes["aspp_weight"] + sizes["aspp_bias"] == 44_239_200
    assert sizes["contextual"] == 9_502_848                    # the six contextual convs; fc_1 is extra
    assert sum(sizes.values()) == 96_136_864    # docs/method.md §2.8: backbone params some optimizer updates
    grouped = {id(p) for v in groups.values() for p in v}
    assert id(model.back.scale.context.fc_1.conv.weight) not in grouped
    assert not any(id(p) in grouped for m in model.modules() if isinstance(m, FrozenBatchNorm2d)
                   for p in m.parameters())
    # every trainable backbone parameter is in exactly one group
    assert grouped == {id(p) for p in model.back.parameters() if p.requires_grad}


def test_backbone_optimizer_multipliers_and_decay(tiny_model):
    model = tiny_model()
    opt = backbone_optimizer(model, "sgd", 2.5e-4, 5e-4)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2.5e-4, 1.25e-3, 2.5e-3, 5e-3])
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 5e-4, 5e-4, 0.0]
    assert all(g["momentum"] == 0.9 and not g["nesterov"] for g in opt.param_groups)
    with pytest.raises(ValueError, match="OPTIMIZER"):
        make_optimizer("lbfgs", [{"params": list(model.dis.parameters())}], 1e-3, 0)


def reference_gradients(model, images, labels, w: LossWeights):
    """The spec's routing written out directly: D <- loss_D, B <- loss_B, G <- loss_G, all from one forward."""
    out = model.step1(images, labels)
    dis = model.dis
    d = discriminator_gan_loss(dis.score(out.real.detach()), dis.score(out.fake.detach()))
    cls_fake, _ = classification_loss(dis.logits(out.fake), out.labels)
    cls_real = sum(classification_loss(dis.logits(f), y)[0] for f, y in zip(out.pyramid_real, out.pyramid_labels)) / 4
    loss_d = d["D_real"] + d["D_fake"] + w.D_cls_real * cls_real + w.D_cls_fake * cls_fake
    g_gan = generator_gan_loss(dis.score(out.fake))
    content = mmd_content_loss(out.fake, out.real.detach(), out.labels)
    loss_g = w.G_GAN * g_gan + w.G_Content * content + w.G_cls * cls_fake
    loss_b = w.B_KLD * out.kld + w.B_cls * cls_real
    trainer = make_trainer(model)
    grads = {}
    for net, loss in (("dis", loss_d), ("back", loss_b), ("gen", loss_g)):
        params = trainer.params[net]
        grads[net] = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return grads, trainer.params


def test_step1_gradients_follow_the_spec_routing(tiny_model):
    w = LossWeights(D_cls_fake=0.25, G_cls=0.5)
    images, labels = batch()
    model = tiny_model()
    torch.manual_seed(5)
    expected, params = reference_gradients(model, images, labels, w)
    trainer = make_trainer(model, lr=0.0, weights=w)   # lr 0: parameters stay, gradients stay inspectable
    torch.manual_seed(5)
    assert trainer.step1(images, labels) is not None
    for net in ("dis", "back", "gen"):
        for p, g in zip(trainer.params[net], expected[net]):
            ref = torch.zeros_like(p) if g is None else g
            assert torch.allclose(p.grad, ref, atol=1e-6, rtol=1e-4), net


def test_step1_updates_all_trained_parameters_and_nothing_frozen(tiny_model):
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = make_trainer(model)
    assert trainer.step1(*batch()) is not None
    after = model.state_dict()
    unchanged = {k for k in before if torch.equal(before[k], after[k])}
    frozen = {k for k in before if ".bn." in k or k.startswith("Em_") or "fc_1" in k}
    assert unchanged == frozen


def test_frozen_backbone_builds_no_backbone_graph_and_stays_fixed(tiny_model):
    model = tiny_model()
    back_before = {k: v.clone() for k, v in model.back.state_dict().items()}
    trainer = make_trainer(model, update_back=False)
    out = model.step1(*batch(), backbone_grad=False)
    assert not out.real.requires_grad and not out.pyramid_real[0].requires_grad
    assert trainer.step1(*batch()) is not None
    assert all(torch.equal(v, model.back.state_dict()[k]) for k, v in back_before.items())
    assert trainer.schedulers["back"].last_iter == 0


def test_skipped_batch_changes_nothing(tiny_model):
    model = tiny_model()
    trainer = make_trainer(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels = batch()
    assert trainer.step1(images, torch.full_like(labels, 255)) is None
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(s.last_iter == 0 for s in trainer.schedulers.values())


def test_step2_runs_no_backbone_and_adam_moves_generator_with_zero_loss(tiny_model):
    model = tiny_model()
    trainer = make_trainer(model, weights=LossWeights(D_cls_fake_transfer=0.125, G_cls_transfer=0.0))
    trainer.step1(*batch())                       # gives the generator's Adam some moments
    calls = []
    model.back.register_forward_hook(lambda *a: calls.append(1))
    gen_before = [p.clone() for p in model.gen.parameters()]
    dis_before = [p.clone() for p in model.dis.parameters()]
    values = trainer.step2(2 * 81)
    assert calls == []
    assert set(values) == {"cls_fake", "acc_fake"} and torch.isfinite(values["cls_fake"])
    assert all(torch.count_nonzero(p.grad) == 0 for p in model.gen.parameters())
    # Faithful to the original: zero gradients, but Adam's stored moments still move the generator.
    assert any(not torch.equal(a, b) for a, b in zip(gen_before, model.gen.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(dis_before, model.dis.parameters()))
    assert trainer.schedulers["back"].last_iter == 2 and trainer.schedulers["gen"].last_iter == 2


def test_self_training_step_trains_on_pseudo_labels(tiny_model):
    model = tiny_model()
    trainer = make_trainer(model)
    images, labels = batch()
    seen = []
    original = model.step1
    model.step1 = lambda im, lab, **kw: seen.append(lab.clone()) or original(im, lab, **kw)
    assert trainer.self_training_step(images, labels) is not None
    pseudo = seen[0]
    assert pseudo.shape == (2, 9, 9)
    assert set(pseudo.unique().tolist()) <= {0, 1, 2, 3, 4, 255}
    small = nearest_resize(labels, (9, 9))
    assert torch.equal(pseudo[small != 255], small[small != 255])   # seen labels kept


def test_evaluate_matches_manual_confusion_and_writes_raw_predictions(tmp_path, tiny_model):
    toy = write_dataset(str(tmp_path), n_train=2, n_test=3, image_size=(40, 56))
    splits = load_class_splits(toy.datadir, toy.name)
    data = ZeroShotSegmentation(toy.root, load_split_list(toy.datadir, toy.name, "test"), splits, train=False,
                                base_size=65)
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    model = tiny_model()
    scores = evaluate(model, loader, splits, torch.device("cpu"), predictions_dir=str(tmp_path / "pred"))
    confusion = np.zeros((5, 5), dtype=np.int64)
    raw_of_test = np.array(list(splits.seen) + list(splits.unseen))
    for i in range(len(data)):
        image, raw, image_id = data[i]
        with torch.no_grad():
            pred = model.predict(image[None]).argmax(1)[0].numpy()
        gt = np.asarray(splits.test_map)[nearest_resize(raw.numpy(), (9, 9))]
        for g, p in zip(gt.ravel(), pred.ravel()):
            if g < 5:
                confusion[g, p] += 1
        saved = np.array(__import__("PIL.Image", fromlist=["Image"]).open(tmp_path / "pred" / f"{image_id}.png"))
        assert saved.shape == (9, 9)
        assert np.array_equal(saved, np.where(pred < 5, raw_of_test[np.minimum(pred, 4)], 255))
    diag = np.diag(confusion)
    iou = diag / (confusion.sum(0) + confusion.sum(1) - diag)
    assert scores["pixel_acc"] == pytest.approx(diag.sum() / confusion.sum())
    assert scores["mIoU"] == pytest.approx(np.nanmean(iou))


def test_batchnorm_calibration_uses_data_statistics(tiny_model):
    model = tiny_model()
    bn = model.back.scale.backbone.layer1.conv1.bn
    assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
    images = [batch(i)[0] for i in range(3)]
    with torch.no_grad(), FrozenBatchNorm2d.calibrating(model) as layers:
        for x in images:
            model.calibration_forward(x)
    assert layers == 1 + 4 * 3 + 4                     # stem, 4 blocks of 3 convs, 4 projections
    # the first BN sees the stem conv's output: its statistics are the mean over the batches of the batch mean and
    # (unbiased) variance, per channel
    with torch.no_grad():
        outputs = [model.back.scale.backbone.layer1.conv1.conv(x) for x in images]
    expected_mean = torch.stack([o.mean(dim=(0, 2, 3)) for o in outputs]).mean(0)
    expected_var = torch.stack([o.var(dim=(0, 2, 3), unbiased=True) for o in outputs]).mean(0)
    assert torch.allclose(bn.running_mean, expected_mean, rtol=1e-4, atol=1e-6)
    assert torch.allclose(bn.running_var, expected_var, rtol=1e-4, atol=1e-6)
    assert int(bn.num_batches_tracked) == 3
    assert not bn.training and bn.momentum == 0.999        # frozen again, with the momentum it had
    model.train()
    assert not bn.training
    frozen = bn.running_var.clone()
    model.calibration_forward(images[0])                   # outside the context nothing changes
    assert torch.equal(bn.running_var, frozen)


def test_self_training_skips_a_batch_without_seen_pixels_at_feature_resolution(tiny_model):
    model = tiny_model()
    trainer = make_trainer(model)
    images, labels = batch()
    labels.fill_(255)
    labels[:, 1::7, 1::7] = 0          # seen pixels at input resolution that nearest 64 -> 9 never samples
    assert not (nearest_resize(labels, (9, 9)) != 255).any() and (labels != 255).any()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    model.back.register_forward_hook(lambda *a: calls.append(1))
    assert trainer.self_training_step(images, labels) is None
    assert calls == []                                           # skipped before pseudo-labelling
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(s.last_iter == 0 for s in trainer.schedulers.values())


def test_critic_updates_step_the_classifier_k_times_and_its_scheduler_once(tiny_model):
    model = tiny_model()
    trainer = make_trainer(model, critic_updates=3)
    steps = []
    original = trainer.optimizers["dis"].step
    trainer.optimizers["dis"].step = lambda *a, **k: steps.append(1) or original(*a, **k)
    grads = []
    backward = trainer.backward
    trainer.backward = (lambda net, loss, retain=True:
                        grads.append((net, float(loss.detach()))) or backward(net, loss, retain))
    assert trainer.step1(*batch()) is not None
    assert len(steps) == 3 and trainer.schedulers["dis"].last_iter == 1
    # the extra critic steps back-propagate the GAN loss only, which is smaller than the full loss_D
    # (loss_D adds the real and fake classification terms)
    dis_losses = [value for net, value in grads if net == "dis"]
    assert len(dis_losses) == 3 and dis_losses[1] < dis_losses[0] and dis_losses[2] < dis_losses[0]


def test_poly_scheduler_takes_the_active_schedules_rate_and_iter_max(tiny_model):
    model = tiny_model()
    splits = SimpleNamespace(num_seen=3, num_unseen=2)
    for name, schedule, init, max_iter, every in (("voc12", "step1", 2.5e-4, 40000, 10),
                                                  ("cocostuff", "step1", 2.5e-4, 40000, 100),
                                                  ("configs_st_cocostuff", "st", 5e-5, 10000, 100)):
        cfg = load_config(os.path.join(ROOT, "configs", f"{name}.yaml"))
        trainer = CaGNetTrainer.from_config(cfg, model, splits, get_schedule(schedule))
        back = trainer.schedulers["back"]
        # Faithful to the original: init/max come from back_opt.lr* and ITER_MAX* of the active schedule, whatever
        # back_scheduler.init_lr* / max_iter* say
        assert (back.init_lr, back.max_iter, back.lr_decay_iter) == (init, max_iter, every), name
        assert back.optimizer.param_groups[2]["lr"] == pytest.approx(10 * init)      # ASPP weights: 10x
        back.load_state_dict({"last_iter": 1050})
        k = 1050 - 1050 % every                                                      # last multiple of lr_decay_iter
        assert back.lr_at(1050) == pytest.approx(init * (1 - k / max_iter) ** 0.9)
        assert back.optimizer.param_groups[0]["lr"] == pytest.approx(init * (1 - k / max_iter) ** 0.9)


def test_pseudo_labelled_unseen_pixels_condition_the_generator_on_the_zero_vector(tiny_model):
    model = tiny_model(num_seen=3, num_unseen=2).train()
    images = torch.randn(1, 3, 64, 64)
    labels = torch.full((1, 9, 9), 255)
    labels[0, :4] = 1                  # seen
    labels[0, 5:] = 4                  # unseen test id S + 1, as a pseudo-label
    conditions = []
    model.gen.register_forward_pre_hook(lambda module, args: conditions.append(args[0].detach().clone()))
    out = model.step1(images, labels)
    condition = conditions[0]
    assert torch.equal(condition[out.labels == 1], model.Em_vis.weight[1].expand(int((out.labels == 1).sum()), -1))
    assert torch.count_nonzero(condition[out.labels == 4]) == 0 and int((out.labels == 4).sum()) == 4 * 9
