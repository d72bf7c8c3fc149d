"""Optimizers by config name, checked against one hand-computed step each."""
import math

import pytest
import torch

from libs.optimizers import make_optimizer


def one_step(kind, **kw):
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = make_optimizer(kind, [{"params": [p]}], lr=0.1, weight_decay=0.5, **kw)
    p.grad = torch.tensor([0.2, 0.4])
    opt.step()
    return p.detach(), opt


def test_sgd_momentum_and_coupled_weight_decay():
    p, opt = one_step("sgd", momentum=0.9)
    g = torch.tensor([0.2, 0.4]) + 0.5 * torch.tensor([1.0, -2.0])       # L2 decay added to the gradient
    assert torch.allclose(p, torch.tensor([1.0, -2.0]) - 0.1 * g)
    assert opt.param_groups[0]["momentum"] == 0.9 and not opt.param_groups[0]["nesterov"]


def test_adam_first_step_is_lr_times_sign():
    p, opt = one_step("adam")
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["betas"] == (0.9, 0.999)
    assert torch.allclose(p, torch.tensor([1.0 - 0.1, -2.0 - 0.1 * math.copysign(1, 0.4 - 1.0)]), atol=1e-6)


def test_rmsprop_step_by_hand():
    p, opt = one_step("rmsprop")
    assert isinstance(opt, torch.optim.RMSprop) and opt.param_groups[0]["alpha"] == 0.99
    g = torch.tensor([0.2, 0.4]) + 0.5 * torch.tensor([1.0, -2.0])
    v = (1 - 0.99) * g ** 2
    assert torch.allclose(p, torch.tensor([1.0, -2.0]) - 0.1 * g / (v.sqrt() + 1e-8), atol=1e-6)


def test_unknown_optimizer_is_an_error_naming_the_choices():
    with pytest.raises(ValueError, match="sgd, adam, rmsprop.*'lbfgs'"):
        make_optimizer("lbfgs", [{"params": [torch.nn.Parameter(torch.zeros(1))]}], 0.1, 0.0)
