import math

import pytest
import torch

from libs import losses
from libs.losses import (
    MMD_SIGMAS,
    RunContext,
    RunPiece,
    RunSummary,
    classification_loss,
    discriminator_gan_loss,
    generator_gan_loss,
    gradient_penalty,
    mmd_content_loss,
    plan_boundary_runs,
)
from models.ops import apply_1x1, to_pixels

# One image 2x2: three visible pixels (top-right ignored).
REAL = torch.tensor([[[[0.9, 0.2], [0.6, 0.5]]]])
FAKE = torch.tensor([[[[0.3, 0.8], [0.1, 0.2]]]])
MASK = torch.tensor([[[True, False], [True, True]]])


def visible(maps, mask):
    """(N, C, h, w) maps -> (P, C) matrix of the visible pixels in raster order: the layout the losses take."""
    return to_pixels(maps)[mask.reshape(-1)]


def image_index(mask):
    return mask.reshape(mask.shape[0], -1).nonzero()[:, 0]


def test_lsgan_is_masked_l1():
    d = discriminator_gan_loss(visible(REAL, MASK), visible(FAKE, MASK), "lsgan")
    assert d["D_real"].item() == pytest.approx((0.1 + 0.4 + 0.5) / 3)
    assert d["D_fake"].item() == pytest.approx((0.3 + 0.1 + 0.2) / 3)
    assert generator_gan_loss(visible(FAKE, MASK), "lsgan").item() == pytest.approx((0.7 + 0.9 + 0.8) / 3)


def test_gan_is_masked_bce():
    d = discriminator_gan_loss(visible(REAL, MASK), visible(FAKE, MASK), "gan")
    assert d["D_real"].item() == pytest.approx(-(math.log(0.9) + math.log(0.6) + math.log(0.5)) / 3, rel=1e-6)
    assert d["D_fake"].item() == pytest.approx(-(math.log(0.7) + math.log(0.9) + math.log(0.8)) / 3, rel=1e-6)
    g = generator_gan_loss(visible(FAKE, MASK), "gan").item()
    assert g == pytest.approx(-(math.log(0.3) + math.log(0.1) + math.log(0.2)) / 3, rel=1e-6)


@pytest.mark.parametrize("gan_type", ["wgan", "wgan-gp"])
def test_wgan_on_sigmoid_scores(gan_type):
    d = discriminator_gan_loss(visible(REAL, MASK), visible(FAKE, MASK), gan_type)
    assert d["D_real"].item() == pytest.approx(-(0.9 + 0.6 + 0.5) / 3)
    assert d["D_fake"].item() == pytest.approx((0.3 + 0.1 + 0.2) / 3)
    assert generator_gan_loss(visible(FAKE, MASK), gan_type).item() == pytest.approx(-(0.3 + 0.1 + 0.2) / 3)


def test_gan_loss_gradient_only_from_visible_pixels():
    fake = FAKE.clone().requires_grad_(True)
    generator_gan_loss(visible(fake, MASK), "lsgan").backward()
    assert torch.allclose(fake.grad, torch.tensor([[[[-1 / 3, 0.0], [-1 / 3, -1 / 3]]]]))


def test_gan_loss_bad_type_and_empty_mask():
    with pytest.raises(ValueError, match="gan_type.*lsgan"):
        discriminator_gan_loss(visible(REAL, MASK), visible(FAKE, MASK), "hinge")
    with pytest.raises(ValueError, match="gan_type"):
        generator_gan_loss(visible(FAKE, MASK), "LSGAN")
    empty = torch.zeros_like(MASK)
    assert discriminator_gan_loss(visible(REAL, empty), visible(FAKE, empty), "lsgan") is None
    assert generator_gan_loss(visible(FAKE, empty), "lsgan") is None


def test_gradient_penalty_linear_critic_by_hand():
    # score(x) = 0.6 x_0 + 0.8 x_1 per pixel: the gradient is w at every pixel whatever alpha is, so the
    # masked per-sample norm is sqrt(#visible) * |w| = sqrt(2) and 1 for the two samples below.
    conv = torch.nn.Conv2d(2, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([0.6, 0.8]).view(1, 2, 1, 1))
    real, fake = torch.randn(2, 2, 2, 2), torch.randn(2, 2, 2, 2)
    mask = torch.tensor([[[True, True], [False, False]], [[False, False], [False, True]]])
    gp = gradient_penalty(lambda x: apply_1x1(conv, x), visible(real, mask), visible(fake, mask), image_index(mask),
                          2, weight=10.0)
    assert gp.item() == pytest.approx(10.0 * (math.sqrt(2) - 1) ** 2 / 2, rel=1e-5)
    # create_graph: the penalty trains the critic; d gp / d w = 10 * sum_n (sqrt(v_n) - 1) sqrt(v_n) * w.
    gp.backward()
    expected = 10.0 * (2 - math.sqrt(2)) * torch.tensor([0.6, 0.8])
    assert torch.allclose(conv.weight.grad.flatten(), expected, rtol=1e-5)


def test_gradient_penalty_per_sample_alpha():
    # score = sum_c x_c^2 per pixel: gradient 2 x_hat = 2 alpha_n on every channel (real 1, fake 0).
    real, fake = torch.ones(2, 3, 2, 2), torch.zeros(2, 3, 2, 2)
    mask = torch.ones(2, 2, 2, dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)
    gp = gradient_penalty(lambda x: (x ** 2).sum(1, keepdim=True), visible(real, mask), visible(fake, mask),
                          image_index(mask), 2, 1.0, generator=gen)
    alpha = torch.rand((2, 1, 1, 1), generator=torch.Generator().manual_seed(0)).flatten()
    assert alpha[0] != alpha[1]
    norms = 2 * alpha * math.sqrt(3 * 4)
    assert gp.item() == pytest.approx(((norms - 1) ** 2).mean().item(), rel=1e-5)


def test_classification_loss_and_accuracy_by_hand():
    # 2 classes, 1x3 image: pixel 0 logits (1, 0) label 0 -> right; pixel 1 (ln 3, 0) label 1 -> wrong;
    # pixel 2 ignored.
    logits = torch.tensor([[[[1.0, math.log(3.0), 5.0]], [[0.0, 0.0, -5.0]]]], requires_grad=True)
    labels = torch.tensor([[[0, 1, 255]]])
    loss, acc = classification_loss(to_pixels(logits), labels.reshape(-1))
    expected = (math.log(1 + math.exp(-1)) + math.log(4.0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert acc.item() == pytest.approx(0.5)
    assert not acc.requires_grad
    loss.backward()
    assert torch.all(logits.grad[..., 2] == 0)


def test_classification_loss_no_valid_pixel_is_none():
    assert classification_loss(to_pixels(torch.randn(1, 3, 2, 2)), torch.full((4,), 255)) is None


# ---------------------------------------------------------------- MMD content loss

def reference_mmd(fake, real, labels, mask, sigmas=MMD_SIGMAS):
    """Straightforward version: walk visible pixels in raster order, cut runs of equal labels, then
    per run build every pairwise difference explicitly."""
    n, c, h, w = fake.shape
    runs, current, last = [], [], None
    for b in range(n):
        for i in range(h):
            for j in range(w):
                if not mask[b, i, j]:
                    continue
                label = int(labels[b, i, j])
                if current and label != last:
                    runs.append(current)
                    current = []
                current.append((b, i, j))
                last = label
    if current:
        runs.append(current)
    if not runs:
        return None
    total = 0
    for run in runs:
        x = torch.stack([fake[b, :, i, j] for b, i, j in run])
        y = torch.stack([real[b, :, i, j] for b, i, j in run])

        def mean_k(a, bb):
            d2 = ((a[:, None, :] - bb[None, :, :]) ** 2).sum(-1)
            return sum(torch.exp(-d2 / (2 * s)).mean() for s in sigmas)

        value = mean_k(x, x) / 2 + mean_k(y, y) / 2 - mean_k(x, y)
        total = total + (torch.sqrt(value) if value > 0 else 0 * value)
    return total / len(runs)


def _features(values):
    """(N, h, w, F) nested lists -> (N, F, h, w) float64."""
    return torch.tensor(values, dtype=torch.float64).permute(0, 3, 1, 2).contiguous()


def test_mmd_single_pixel_runs():
    # 1x1x3 image, labels 0,1,0: three runs of one pixel, squared distances 1, 4 and 0.
    fake = _features([[[[1.0, 0.0], [2.0, 0.0], [5.0, 5.0]]]])
    real = _features([[[[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]]]])
    labels = torch.tensor([[[0, 1, 0]]])
    mask = labels != 255
    loss = mmd_content_loss(visible(fake, mask), visible(real, mask), labels[mask])
    per_run = [math.sqrt(sum(1 - math.exp(-d2 / (2 * s)) for s in MMD_SIGMAS)) for d2 in (1.0, 4.0)]
    assert loss.item() == pytest.approx((per_run[0] + per_run[1] + 0.0) / 3, rel=1e-9)


def _two_pixel_run_value():
    # x = (0, 2), y = (1, 1) in 1-D: k(x,x) has d2 0,4,4,0; k(y,y) all 0; k(x,y) all 1.
    a = sum((2 + 2 * math.exp(-4 / (2 * s))) / 4 / 2 + 0.5 - math.exp(-1 / (2 * s)) for s in MMD_SIGMAS)
    return math.sqrt(a)


def test_mmd_run_merges_across_images():
    fake = _features([[[[0.0]]], [[[2.0]]]])
    real = _features([[[[1.0]]], [[[1.0]]]])
    labels = torch.tensor([[[3]], [[3]]])
    mask = labels != 255
    loss = mmd_content_loss(visible(fake, mask), visible(real, mask), labels[mask])
    assert loss.item() == pytest.approx(_two_pixel_run_value(), rel=1e-9)


def test_mmd_run_merges_across_ignored_gap_and_row_end():
    # Row 0: 3, ignored, ..., row 1: 3 -> the two visible pixels form one run.
    fake = _features([[[[0.0], [9.0]], [[2.0], [7.0]]]])
    real = _features([[[[1.0], [9.0]], [[1.0], [0.0]]]])
    labels = torch.tensor([[[3, 255], [3, 255]]])
    mask = labels != 255
    loss = mmd_content_loss(visible(fake, mask), visible(real, mask), labels[mask])
    assert loss.item() == pytest.approx(_two_pixel_run_value(), rel=1e-9)
    # Separated by a visible pixel of another class: three runs instead.
    labels_split = torch.tensor([[[3, 4], [3, 255]]])
    single = [math.sqrt(sum(1 - math.exp(-d2 / (2 * s)) for s in MMD_SIGMAS)) for d2 in (1.0, 1.0)]
    mask = labels_split != 255
    split = mmd_content_loss(visible(fake, mask), visible(real, mask), labels_split[mask])
    assert split.item() == pytest.approx((single[0] + 0.0 + single[1]) / 3, rel=1e-9)


def _random_case(seed, n=2, c=4, h=5, w=6, classes=3, ignore_rate=0.3, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n, h, w), generator=gen)
    # Mostly horizontal stretches so that long runs occur next to single-pixel ones.
    labels[:, :, 1::2] = labels[:, :, 0::2][..., : labels[:, :, 1::2].shape[-1]]
    labels[torch.rand(n, h, w, generator=gen) < ignore_rate] = 255
    fake = torch.randn(n, c, h, w, generator=gen, dtype=dtype)
    real = torch.randn(n, c, h, w, generator=gen, dtype=dtype)
    return fake, real, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mmd_matches_reference_value_and_gradients(seed):
    fake, real, labels = _random_case(seed)
    mask = labels != 255
    f1, r1 = fake.clone().requires_grad_(True), real.clone().requires_grad_(True)
    f2, r2 = fake.clone().requires_grad_(True), real.clone().requires_grad_(True)
    ours = mmd_content_loss(visible(f1, mask), visible(r1, mask), labels[mask])
    ref = reference_mmd(f2, r2, labels, mask)
    lengths = torch.unique_consecutive(labels[mask], return_counts=True)[1]
    assert lengths.numel() > 10 and lengths.max() > 2 and (lengths == 1).any()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-9)
    ours.backward()
    ref.backward()
    assert torch.allclose(f1.grad, f2.grad, rtol=1e-7, atol=1e-10)
    assert torch.allclose(r1.grad, r2.grad, rtol=1e-7, atol=1e-10)
    assert torch.all(f1.grad[~mask.unsqueeze(1).expand_as(f1)] == 0)


def test_mmd_long_runs_processed_in_blocks(monkeypatch):
    # A tiny block budget forces row-blocking inside one run and one run per batched call.
    monkeypatch.setattr(losses, "_MMD_BLOCK_ELEMENTS", 7)
    fake, real, labels = _random_case(3, n=2, h=4, w=8, classes=2, ignore_rate=0.1)
    labels[0, :3] = 1  # one run of >= 20 pixels
    mask = labels != 255
    f1, f2 = fake.clone().requires_grad_(True), fake.clone().requires_grad_(True)
    ours = mmd_content_loss(visible(f1, mask), visible(real, mask), labels[mask])
    ref = reference_mmd(f2, real, labels, mask)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-9)
    ours.backward()
    ref.backward()
    assert torch.allclose(f1.grad, f2.grad, rtol=1e-7, atol=1e-10)


def test_mmd_kernel_sum_gradcheck():
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(2, 3, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(2, 4, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    valid_a = torch.tensor([[True, True, False], [True, True, True]])
    valid_b = torch.tensor([[True, False, True, True], [True, True, True, False]])
    fn = lambda x, y: losses._PairKernelSum.apply(x, y, valid_a, valid_b, (2.0, 5.0))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (a, b))


def test_mmd_identical_fake_and_real_is_zero_with_zero_gradient():
    fake, _, labels = _random_case(5, c=16, h=8, w=8, dtype=torch.float32)
    fake = fake * 3
    real = fake.clone()
    f = fake.clone().requires_grad_(True)
    mask = labels != 255
    loss = mmd_content_loss(visible(f, mask), visible(real, mask), labels[mask])
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(f.grad).all() and torch.all(f.grad == 0)


def test_mmd_returns_none_without_visible_pixels_and_checks_shapes():
    fake, real, labels = _random_case(6)
    mask = labels != 255
    a = mmd_content_loss(visible(fake, mask), visible(real, mask), labels[mask])
    assert torch.isfinite(a)
    empty = torch.zeros_like(mask)
    assert mmd_content_loss(visible(fake, empty), visible(real, empty), labels[empty]) is None
    with pytest.raises(ValueError, match="labels"):
        mmd_content_loss(visible(fake, mask), visible(real, mask), labels[mask][:-1])


def test_unused_content_losses_are_means_over_visible_pixels_and_channels():
    from libs.losses import l1_content_loss, mse_content_loss
    fake = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    real = torch.tensor([[0.0, 4.0], [3.0, 1.0]])
    labels = torch.tensor([1, 1])
    assert l1_content_loss(fake, real, labels).item() == pytest.approx((1 + 2 + 0 + 4) / 4)
    assert mse_content_loss(fake, real, labels).item() == pytest.approx((1 + 4 + 0 + 16) / 4)


# ---- several processes: runs that cross process boundaries (docs/method.md §3.5, §8.6) ------------------------
def test_boundary_plan_by_hand():
    # labels per process: [1 1 2] [2 2] [] [2 0] [0] -> global runs 1 1 | 2 2 2 2 2 | 0 0 : 3 runs
    parts = [[1, 1, 2], [2, 2], [], [2, 0], [0]]
    summaries = [RunSummary.of(torch.tensor(p, dtype=torch.long)) for p in parts]
    assert summaries[0] == RunSummary(3, 1, 2, 2, 1, 2) and summaries[2] == RunSummary(0)
    plans = [plan_boundary_runs(summaries, r) for r in range(5)]
    assert {p.num_runs for p in plans} == {3}
    assert plans[0].before == () and plans[0].after == (RunPiece(1, "first", 2), RunPiece(3, "first", 1))
    assert plans[1].before == (RunPiece(0, "last", 1),) and plans[1].after == (RunPiece(3, "first", 1),)
    assert plans[2].before == plans[2].after == ()                  # nothing visible: takes part in no run
    assert plans[3].before == (RunPiece(0, "last", 1), RunPiece(1, "last", 2))
    assert plans[3].after == (RunPiece(4, "first", 1),) and plans[4].after == ()


def _sharded_mmd(fake, real, labels, cuts):
    """Sum over simulated processes of their MMD parts (the others' pixels detached, as exchanged)."""
    bounds = [0, *cuts, fake.shape[0]]
    parts = [(fake[a:b], real[a:b], labels[a:b]) for a, b in zip(bounds, bounds[1:])]
    summaries = [RunSummary.of(p[2]) for p in parts]

    def rows(piece):
        s = summaries[piece.rank]
        cut = slice(0, s.first_len) if piece.which == "first" else slice(s.count - s.last_len, s.count)
        return parts[piece.rank][0][cut].detach(), parts[piece.rank][1][cut]

    def joined(pieces, i):
        return torch.cat([rows(p)[i] for p in pieces]) if pieces else fake.new_zeros(0, fake.shape[1])

    total = 0.0
    for rank, (f, r, y) in enumerate(parts):
        plan = plan_boundary_runs(summaries, rank)
        context = RunContext(joined(plan.before, 0), joined(plan.before, 1), joined(plan.after, 0),
                             joined(plan.after, 1), plan.num_runs)
        value = mmd_content_loss(f, r, y, context=context)
        total = total + (0.0 if value is None else value)
    return total


@pytest.mark.parametrize("cuts", [[8, 8, 25], [21, 22, 39], [4, 12, 22], [1, 2, 10], [24, 29, 30]])
def test_mmd_split_over_processes_sums_to_the_global_loss_and_gradient(cuts):
    g = torch.Generator().manual_seed(sum(cuts))
    labels = torch.randint(0, 3, (40,), generator=g)
    labels[5:15], labels[20:33] = 1, 2              # long runs, cut by several of the boundaries above
    fake = torch.rand(40, 8, dtype=torch.float64, generator=g, requires_grad=True)
    real = torch.rand(40, 8, dtype=torch.float64, generator=g)
    reference = mmd_content_loss(fake, real, labels)
    expected, = torch.autograd.grad(reference, fake)
    total = _sharded_mmd(fake, real, labels, cuts)
    gradient, = torch.autograd.grad(total, fake)
    assert total.item() == pytest.approx(reference.item(), rel=1e-12)
    assert torch.allclose(gradient, expected, rtol=1e-10, atol=1e-14)
