"""The networks' equations by hand: the contextual module, the dilated stages and the summed ASPP, the He init."""
import math

import pytest
import torch
import torch.nn.functional as F

from models.backbone import ASPP, DeepLabV2
from models.contextual import ContextualModule
from models.initialization import init_weights


def test_contextual_module_equations_step_by_step():
    torch.manual_seed(0)
    ctx = ContextualModule(feat_channels=6, width=4).eval()
    init_weights(ctx, "kaiming")
    h = torch.randn(2, 6, 5, 5) * 3
    out = ctx(h)
    c1 = F.relu(F.conv2d(torch.sigmoid(h), ctx.contextual1.conv.weight, padding=1))
    c2 = F.relu(F.conv2d(c1, ctx.contextual2.conv.weight, padding=2, dilation=2))      # cascaded: c2 = f(c1)
    c3 = F.relu(F.conv2d(c2, ctx.contextual3.conv.weight, padding=5, dilation=5))      # c3 = f(c2)
    gates = torch.sigmoid(F.relu(F.conv2d(torch.cat([c1, c2, c3], 1), ctx.fc_1.conv.weight, padding=1)))
    assert gates.min() >= 0.5 and gates.max() < 1.0 and (gates == 0.5).any()         # sigmoid(ReLU(.)) in [0.5, 1)
    pooled = F.relu(F.conv2d(torch.cat([gates[:, :1] * c1, gates[:, 1:2] * c2, gates[:, 2:] * c3], 1),
                             ctx.contextualpool.conv.weight))
    mu = F.conv2d(pooled, ctx.contextuallocalmu.conv.weight, padding=1)
    logvar = F.relu(F.conv2d(pooled, ctx.contextuallocalsigma.conv.weight, padding=1))
    assert torch.allclose(out.mu, mu, atol=1e-5) and torch.allclose(out.logvar, logvar, atol=1e-5)
    assert (out.logvar >= 0).all() and (out.logvar == 0).any()          # the ReLU on the "log-variance"
    assert (out.mu < 0).any()                                           # no activation on mu
    assert torch.equal(out.z, out.mu)                                   # eval mode: z = mu
    assert torch.allclose(out.h0, torch.sigmoid(h + h * torch.sigmoid(mu)), atol=1e-6)


def test_reparameterisation_uses_exp_of_half_logvar():
    ctx = ContextualModule(feat_channels=4, width=4).train()
    h = torch.randn(1, 4, 3, 3)
    torch.manual_seed(3)
    out = ctx(h)
    torch.manual_seed(3)
    ctx.eval()
    reference = ctx(h)           # eval mode draws nothing, so the same seed gives the noise the sampler used
    torch.manual_seed(3)
    noise = torch.randn_like(reference.mu)
    assert torch.allclose(out.z, reference.mu + noise * torch.exp(0.5 * reference.logvar), atol=1e-6)


def test_dilations_strides_and_output_stride_of_the_stages():
    net = DeepLabV2(out_channels=8, n_blocks=(1, 2, 2, 1), base_width=4, atrous_rates=(6, 12, 18, 24))
    for name, dilation in (("layer2", 1), ("layer3", 1), ("layer4", 2), ("layer5", 4)):
        for block in getattr(net, name).children():
            conv = block.conv3x3.conv
            assert conv.dilation == (dilation, dilation) and conv.padding == (dilation, dilation), name
    assert net.layer3.block1.reduce.conv.stride == (2, 2) and net.layer3.block1.proj.conv.stride == (2, 2)
    assert all(b.reduce.conv.stride == (1, 1) for n in ("layer2", "layer4", "layer5")
               for b in getattr(net, n).children())
    assert net.layer1.pool.ceil_mode and net.layer1.conv1.conv.stride == (2, 2)
    assert [c.dilation[0] for c in net.aspp.stages.children()] == [6, 12, 18, 24]
    assert net(torch.randn(1, 3, 65, 65)).shape == (1, 8, 9, 9)       # output stride 8 (65 -> 9)


def test_aspp_is_the_sum_of_its_four_dilated_branches():
    aspp = ASPP(3, 2, (1, 2, 3, 4))
    x = torch.randn(1, 3, 9, 9)
    branches = [F.conv2d(x, c.weight, c.bias, padding=r, dilation=r)
                for c, r in zip(aspp.stages.children(), (1, 2, 3, 4))]
    assert torch.allclose(aspp(x), sum(branches), atol=1e-6)
    assert all(torch.equal(c.bias, torch.zeros_like(c.bias)) for c in aspp.stages.children())
    assert all(c.weight.std().item() == pytest.approx(0.01, rel=0.2) for c in aspp.stages.children())


def test_he_init_spread_zero_biases_and_untouched_batchnorm():
    torch.manual_seed(0)
    net = DeepLabV2(out_channels=64, n_blocks=(1, 1, 1, 1), base_width=16, atrous_rates=(1, 2, 3, 4))
    init_weights(net, "kaiming")
    for conv in [net.layer5.block1.conv3x3.conv, net.layer4.block1.increase.conv, *net.aspp.stages.children()]:
        fan_in = conv.weight[0].numel()
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)   # overwrites N(0, 0.01)
        assert abs(conv.weight.mean().item()) < 0.1 * math.sqrt(2 / fan_in)
        if conv.bias is not None:
            assert torch.equal(conv.bias, torch.zeros_like(conv.bias))
    bn = net.layer2.block1.reduce.bn
    assert torch.equal(bn.weight, torch.ones_like(bn.weight))
    assert torch.equal(bn.running_var, torch.ones(bn.num_features))
