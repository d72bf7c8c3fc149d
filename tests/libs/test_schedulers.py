import pytest
import torch

from libs.schedulers import ConstantLR, LambdaDecay, PolyLR, StepDecay, build_scheduler, training_phase


def _sgd(num_groups=1, lr_mults=None):
    groups = []
    for g in range(num_groups):
        group = {"params": [torch.nn.Parameter(torch.zeros(1))]}
        if lr_mults is not None:
            group["lr_mult"] = lr_mults[g]
        groups.append(group)
    return torch.optim.SGD(groups, lr=1.0, momentum=0.9)


def _lrs(optimizer):
    return [group["lr"] for group in optimizer.param_groups]


def test_poly_voc_step1_with_group_multipliers():
    opt = _sgd(4)
    sched = build_scheduler(opt, "poly", init_lr=2.5e-4, max_iter=40000, power=0.9, lr_decay_iter=10,
                            multipliers=(1, 5, 10, 20))
    assert _lrs(opt) == pytest.approx([2.5e-4, 1.25e-3, 2.5e-3, 5e-3], rel=1e-12)
    seen = {}
    for k in range(1, 26):
        sched.step()
        seen[k] = _lrs(opt)
    assert seen[5] == pytest.approx([2.5e-4, 1.25e-3, 2.5e-3, 5e-3], rel=1e-12)   # k' = 0
    assert seen[9] == seen[5]
    f10 = 0.99975 ** 0.9                                                          # ~0.999775
    assert f10 == pytest.approx(0.999775, abs=1e-6)
    assert seen[10] == pytest.approx([2.5e-4 * f10 * m for m in (1, 5, 10, 20)], rel=1e-12)
    assert seen[19] == seen[10]
    assert seen[25][0] == pytest.approx(2.5e-4 * 0.9995 ** 0.9, rel=1e-12)        # k' = 20
    # k = 39999: k' = 39990, factor (10 / 40000) ** 0.9 = exp(0.9 ln 2.5e-4) ~ 5.72989e-4.
    assert sched.lr_at(39999) == pytest.approx(1.43247e-7, rel=1e-4)
    assert sched.group_lrs_at(39999)[3] == pytest.approx(20 * 1.43247e-7, rel=1e-4)
    assert sched.lr_at(40000) == sched.lr_at(39990)  # no update at or beyond max_iter


def test_multipliers_from_param_groups():
    opt = _sgd(4, lr_mults=[1, 5, 10, 20])
    PolyLR(opt, 2.0, max_iter=100)
    assert _lrs(opt) == [2.0, 10.0, 20.0, 40.0]
    opt = _sgd(2)
    ConstantLR(opt, 3.0)
    assert _lrs(opt) == [3.0, 3.0]
    with pytest.raises(ValueError, match="multipliers"):
        ConstantLR(_sgd(2), 1.0, multipliers=[1.0])


def test_lambda_voc_step1():
    sched = build_scheduler(_sgd(), "lambda", init_lr=2.5e-4, start_decay_iter=10000, step_size=5000, gamma=0.71)
    assert sched.lr_at(0) == sched.lr_at(9999) == 2.5e-4
    assert sched.lr_at(10000) == pytest.approx(1.775e-4, rel=1e-12)
    assert sched.lr_at(14999) == pytest.approx(1.775e-4, rel=1e-12)
    assert sched.lr_at(15000) == pytest.approx(1.26025e-4, rel=1e-12)
    assert sched.lr_at(20000) == pytest.approx(8.9477750e-5, rel=1e-9)


def test_lambda_voc_finetune():
    opt = _sgd()
    sched = LambdaDecay(opt, 5e-5, start_decay_iter=3000, step_size=1000, gamma=0.1)
    assert sched.lr_at(2999) == 5e-5
    assert sched.lr_at(3000) == pytest.approx(5e-6) and sched.lr_at(3999) == pytest.approx(5e-6)
    assert sched.lr_at(4000) == pytest.approx(5e-7) and sched.lr_at(4999) == pytest.approx(5e-7)
    assert sched.lr_at(5000) == pytest.approx(5e-8) and sched.lr_at(5999) == pytest.approx(5e-8)
    for _ in range(3000):
        sched.step()
    assert _lrs(opt) == [pytest.approx(5e-6)]


def test_step_and_constant():
    sched = StepDecay(_sgd(), 1.0, step_size=3, gamma=0.5)
    assert [sched.lr_at(k) for k in range(7)] == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]
    assert build_scheduler(_sgd(), "constant", init_lr=0.1).lr_at(10 ** 6) == 0.1


def test_build_scheduler_errors():
    with pytest.raises(ValueError, match="lr_policy.*poly.*lambda.*step.*constant"):
        build_scheduler(_sgd(), "cosine", init_lr=0.1)
    with pytest.raises(ValueError, match="max_iter"):
        build_scheduler(_sgd(), "poly", init_lr=0.1)
    with pytest.raises(ValueError, match="step_size"):
        build_scheduler(_sgd(), "lambda", init_lr=0.1, step_size=0)


@pytest.mark.parametrize("policy", ["poly", "lambda"])
def test_state_dict_round_trip_continues_identically(policy):
    kwargs = dict(init_lr=0.01, max_iter=40, lr_decay_iter=3, start_decay_iter=15, step_size=5, gamma=0.5)
    opt_a = _sgd(2)
    a = build_scheduler(opt_a, policy, multipliers=(1, 10), **kwargs)
    for _ in range(12):
        a.step()
    state = a.state_dict()
    expected = []
    for _ in range(20):
        a.step()
        expected.append(_lrs(opt_a))
    opt_b = _sgd(2)
    b = build_scheduler(opt_b, policy, multipliers=(1, 10), **kwargs)
    b.load_state_dict(state)
    assert _lrs(opt_b) == a.group_lrs_at(12)
    got = []
    for _ in range(20):
        b.step()
        got.append(_lrs(opt_b))
    assert got == expected and b.last_iter == 32
    assert len(set(map(tuple, expected))) > 3   # the window crosses several decay points


def test_training_phase_100_100():
    phases = [training_phase(k, 100, 100) for k in range(401)]
    assert phases[:100] == ["step1"] * 100
    assert phases[100:200] == ["step2"] * 100
    assert phases[200:300] == ["step1"] * 100 and phases[300:400] == ["step2"] * 100 and phases[400] == "step1"
    assert [training_phase(k, 100, 100, first="step2") for k in (0, 99, 100, 199, 200)] == \
        ["step2", "step2", "step1", "step1", "step2"]


def test_training_phase_uneven_and_errors():
    assert [training_phase(k, 3, 2) for k in range(10)] == \
        ["step1"] * 3 + ["step2"] * 2 + ["step1"] * 3 + ["step2"] * 2
    assert [training_phase(k, 3, 2, "step2") for k in range(5)] == ["step2"] * 2 + ["step1"] * 3
    with pytest.raises(ValueError, match="first.*step1.*step2"):
        training_phase(0, 100, 100, first="step3")
    with pytest.raises(ValueError, match="interval"):
        training_phase(0, 0, 0)
