import json
import os
import warnings

import pytest
import torch

from models.backbone import FrozenBatchNorm2d, feature_size
from models.cagnet import build_cagnet, unseen_prior
from models.contextual import kl_divergence
from models.ops import nearest_resize
from tests.e2e_config import ROOT

MANIFEST = os.path.join(ROOT, "tests", "data", "official_checkpoint_manifest.json")


def full_size_model(num_seen, num_unseen, num_outputs):
    with torch.device("meta"):
        return build_cagnet(torch.zeros(256, 600), torch.zeros(num_seen + num_unseen, 600), num_outputs)


@pytest.mark.parametrize("size, expected", [(368, 47), (276, 35), (184, 24), (513, 65), (384, 49), (256, 33),
                                            (328, 42), (246, 31), (164, 21)])
def test_feature_size_matches_spec(size, expected):
    assert feature_size(size) == expected


@pytest.mark.parametrize("size", [33, 40, 49, 64, 65, 71])
def test_feature_size_matches_forward(size, tiny_model):
    model = tiny_model().eval()
    with torch.no_grad():
        h0 = model.back(torch.randn(1, 3, size, size)).h0
    assert h0.shape[-2:] == (feature_size(size), feature_size(size))


@pytest.mark.parametrize("dataset, seen, unseen, outputs, total, grad, elements, gen, dis, back", [
    ("voc12", 15, 5, 21, 101_786_606, 101_621_006, 101_892_054, 4_720_088, 637_974, 96_262_944),
    ("context", 29, 4, 34, 101_807_731, 101_634_331, 101_913_179, 4_720_088, 651_299, 96_262_944),
    ("cocostuff", 167, 15, 183, 102_049_856, 101_787_056, 102_155_304, 4_720_088, 804_024, 96_262_944),
])
def test_full_size_parameter_counts_match_spec(dataset, seen, unseen, outputs, total, grad, elements, gen, dis,
                                               back):
    model = full_size_model(seen, unseen, outputs)
    params = sum(p.numel() for p in model.parameters())
    embeddings = model.Em_vis.weight.numel() + model.Em_all.weight.numel()
    assert params + embeddings == total                       # spec: all parameters incl. embeddings
    # The original marks BN affine and fc_1 trainable but never optimizes them; we freeze them, so
    # requires_grad covers exactly what some optimizer updates (spec: 101,494,926 for VOC).
    frozen_in_original = 105_344 + 20_736
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == grad - frozen_in_original
    assert sum(v.numel() for v in model.state_dict().values()) == elements
    assert len(model.state_dict()) == 659
    assert sum(p.numel() for p in model.gen.parameters()) == gen
    assert sum(p.numel() for p in model.dis.parameters()) == dis
    assert sum(p.numel() for p in model.back.parameters()) == back
    if dataset == "voc12":
        assert grad - frozen_in_original == 101_494_926


def test_shapes_and_output_stride_tiny(tiny_model):
    model = tiny_model()
    model.train()
    x = torch.randn(2, 3, 64, 64)
    out = model.back(x)
    pyramid = model.back.pyramid(x, out.h0, select=lambda o: o.h0)
    assert out.h0.shape == (2, 16, 9, 9) and out.z.shape == (2, 16, 9, 9)
    assert [tuple(p.shape[-2:]) for p in pyramid] == [(9, 9), (5, 5), (7, 7), (9, 9)]
    assert model.pyramid_shapes(64, 64) == [(9, 9), (5, 5), (7, 7), (9, 9)]
    assert ((out.h0 >= 0) & (out.h0 <= 1)).all()  # sigmoid output (float32 may round to 1)
    # fused map is the pixel-wise max, so it dominates the full-scale map
    assert (pyramid[3] >= pyramid[0]).all()


def test_frozen_batchnorm_stays_in_eval_and_untrainable(tiny_model):
    model = tiny_model()
    assert not model.back.scale.backbone.layer1.conv1.bn.training   # frozen from construction on
    model.train()
    bns = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(bns) == 1 + 3 * 4 + 4  # stem + 3 per block + proj per stage
    assert all(not bn.training for bn in bns)
    assert all(not p.requires_grad for bn in bns for p in bn.parameters())
    before = bns[0].running_mean.clone()
    x = torch.randn(2, 3, 40, 40)
    model.back.pyramid(x, model.back(x).h0, select=lambda o: o.h0)
    assert torch.equal(before, bns[0].running_mean)


def test_eval_is_deterministic_and_uses_mu(tiny_model):
    model = tiny_model().eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        a, b = model.predict(x), model.predict(x)
    assert torch.equal(a, b)
    assert a.shape == (1, 6, 7, 7)
    with torch.no_grad():
        out = model.back(x)
    assert torch.equal(out.z, out.mu)                  # eval mode: the latent code is mu itself
    model.train()
    with torch.no_grad():
        first, second = model.back(x), model.back(x)
    assert not torch.equal(first.z, second.z)          # training mode samples z ...
    assert torch.equal(first.mu, second.mu)            # ... around the same mu
    assert not torch.equal(first.z, first.mu)


def test_generator_output_in_unit_interval_and_dropout_train_only(tiny_model):
    model = tiny_model()
    cond, code = torch.randn(50, 12), torch.randn(50, 16)
    model.gen.train()
    out = model.gen(cond, code)
    assert out.shape == (50, 16) and ((out > 0) & (out < 1)).all()
    assert not torch.equal(model.gen(cond, code), model.gen(cond, code))    # training mode: fresh dropout masks
    model.gen.eval()
    assert torch.equal(model.gen(cond, code), model.gen(cond, code))
    with pytest.raises(ValueError, match="gen.in_dim_mlp"):
        model.gen(torch.randn(5, 3), code[:5])


def test_kl_of_standard_normal_is_zero_and_masked_mean():
    mu, logvar = torch.zeros(2, 4, 3, 3), torch.zeros(2, 4, 3, 3)
    assert kl_divergence(mu, logvar, torch.ones(2, 3, 3, dtype=torch.bool)).item() == 0.0
    mu = torch.zeros(1, 2, 1, 2)
    mu[0, :, 0, 0] = 2.0                                # KL per element = mu^2 / 2 = 2 on pixel 0
    mask = torch.tensor([[[True, False]]])
    assert kl_divergence(mu, torch.zeros_like(mu), mask).item() == pytest.approx(2.0)
    assert kl_divergence(mu, torch.zeros_like(mu), torch.zeros_like(mask)).item() == 0.0
    logvar = torch.full((1, 1, 1, 1), 1.0)              # -0.5 (1 + 1 - e) = (e - 2) / 2
    assert kl_divergence(torch.zeros(1, 1, 1, 1), logvar).item() == pytest.approx((2.718281828 - 2) / 2)


def test_step1_detaches_generator_input_and_gathers_visible_pixels(tiny_model):
    model = tiny_model().train()
    images = torch.randn(2, 3, 64, 64)
    labels = torch.full((2, 64, 64), 255, dtype=torch.long)
    labels[0, :32, :] = 1
    labels[1, 20:, 10:50] = 2
    out = model.step1(images, labels)
    y = nearest_resize(labels, (9, 9))
    assert out.real.shape[0] == out.fake.shape[0] == int((y != 255).sum())
    assert torch.equal(out.labels, y[y != 255])
    # gradients of the fake features reach the generator only, never the backbone/contextual module
    model.zero_grad()
    out.fake.sum().backward(retain_graph=True)
    assert all(p.grad is None for p in model.back.parameters())
    assert all(p.grad is not None for p in model.gen.parameters())
    # the KL term trains the contextual mu/logvar convs and the backbone below, never fc_1
    model.zero_grad()
    out.kld.backward(retain_graph=True)
    ctx = model.back.scale.context
    assert ctx.contextuallocalmu.conv.weight.grad is not None
    assert model.back.scale.backbone.layer2.block1.reduce.conv.weight.grad is not None
    assert ctx.fc_1.conv.weight.grad is None
    # real classification through the pyramid trains backbone and dis
    model.zero_grad()
    sum(model.dis.logits(f).sum() for f in out.pyramid_real).backward()
    assert model.back.scale.backbone.aspp.stages.c0.bias.grad is not None
    assert model.dis.cls.weight.grad is not None and model.gen.mlp[0].conv.weight.grad is None


def test_step1_skips_batches_without_visible_pixels(tiny_model):
    model = tiny_model().train()
    labels = torch.full((1, 64, 64), 255, dtype=torch.long)
    assert model.step1(torch.randn(1, 3, 64, 64), labels) is None
    # 64 -> 9x9 (full scale) samples rows/columns 0, 7, 14, ...; 64 -> 5x5 (scale 0.5) samples 0, 12, 25, ...
    assert model.pyramid_shapes(64, 64) == [(9, 9), (5, 5), (7, 7), (9, 9)]
    labels[0, 7, 7] = 1                 # visible at full scale, invisible at scale 0.5
    visible = [bool((nearest_resize(labels, s) != 255).any()) for s in model.pyramid_shapes(64, 64)]
    assert visible == [True, False, False, True]
    assert not model.has_visible_pixels(labels, (64, 64))
    assert model.step1(torch.randn(1, 3, 64, 64), labels) is None
    labels[0, 0, 0] = 2                 # row/column 0 is sampled at every scale
    assert model.has_visible_pixels(labels, (64, 64))
    assert model.step1(torch.randn(1, 3, 64, 64), labels) is not None


def test_step2_needs_no_backbone_and_samples_with_prior(tiny_model):
    model = tiny_model(num_seen=3, num_unseen=2).train()
    calls = []
    model.back.register_forward_hook(lambda *a: calls.append(1))
    prior = unseen_prior(3, 2, 9.0)
    assert prior.tolist() == [1, 1, 1, 10, 10]
    out = model.step2(20000, prior, torch.Generator().manual_seed(0))
    assert calls == []
    counts = torch.bincount(out.labels, minlength=5).float() / 20000
    assert counts[3:].sum().item() == pytest.approx(20 / 23, abs=0.01)
    assert out.fake.shape == (20000, 16)


def test_predict_uses_full_scale_only(tiny_model):
    model = tiny_model().eval()
    sizes = []
    model.back.scale.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[-1]))
    with torch.no_grad():
        logits = model.predict(torch.randn(1, 3, 65, 65))
    assert sizes == [65] and logits.shape == (1, 6, 9, 9)


def test_state_dict_names_match_manifest_order():
    from libs.checkpoint import ours_to_original
    manifest = json.load(open(MANIFEST))
    names = [e["name"] for e in manifest["datasets"]["voc12"]["keys"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = full_size_model(15, 5, 21)
    assert list(ours_to_original(model.state_dict())) == names
