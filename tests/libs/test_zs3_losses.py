"""ZS3Net's maths: the GMMN loss against a naive double loop, and the top-p% pseudo-labels on a hand-made map."""
import math

import pytest
import torch

from libs.losses import GMMN_SIGMAS, gmmn_mmd_loss
from libs.pseudo_labels import top_percent_labels


def naive_gmmn(fake, real, sigmas):
    """ZS3's loss written out: sqrt(sum_sigma [mean k(f,f) + mean k(r,r) - 2 mean k(f,r)])."""
    def mean_kernel(a, b, sigma):
        total = 0.0
        for i in range(len(a)):
            for j in range(len(b)):
                total += math.exp(-float(((a[i] - b[j]) ** 2).sum()) / (2.0 * sigma))
        return total / (len(a) * len(b))
    value = sum(mean_kernel(fake, fake, s) + mean_kernel(real, real, s) - 2 * mean_kernel(fake, real, s)
                for s in sigmas)
    return math.sqrt(value)


def test_gmmn_loss_matches_double_loop():
    g = torch.Generator().manual_seed(0)
    fake = torch.rand(6, 5, generator=g, dtype=torch.float64) * 3
    real = torch.rand(9, 5, generator=g, dtype=torch.float64) * 3 + 0.5     # M != N: the weights are per set
    loss = gmmn_mmd_loss(fake, real)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(naive_gmmn(fake, real, GMMN_SIGMAS), rel=1e-10)
    assert gmmn_mmd_loss(fake, real, (60.0,)).item() == pytest.approx(naive_gmmn(fake, real, (60.0,)), rel=1e-10)
    # float32 input: float32 result close to the float64 one
    assert gmmn_mmd_loss(fake.float(), real.float()).item() == pytest.approx(loss.item(), rel=1e-4)


def test_gmmn_loss_gradient_is_finite_at_zero_and_flows_to_fake_only():
    real = torch.rand(4, 3, dtype=torch.float64)
    fake = real.clone().requires_grad_(True)
    loss = gmmn_mmd_loss(fake, real)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    assert torch.isfinite(fake.grad).all()
    fake2 = (real + 1).requires_grad_(True)
    gmmn_mmd_loss(fake2, real).backward()
    assert fake2.grad.abs().sum() > 0


def test_gmmn_loss_bad_shapes():
    with pytest.raises(ValueError, match="fake"):
        gmmn_mmd_loss(torch.zeros(0, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="fake"):
        gmmn_mmd_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def _logits(unseen_scores, seen_scores=None):
    """(C=4, w) logits of one 1 x w image: class 0/1 seen, 2/3 unseen; each entry (class, logit) wins its pixel."""
    columns = []
    for cls, value in unseen_scores:
        col = torch.zeros(4)
        col[cls] = value
        columns.append(col)
    return torch.stack(columns, 1)[:, None, :]                    # (4, 1, w)


def test_top_percent_per_image_and_class_on_a_hand_made_map():
    ignore = 255
    # image 0: pixel 0 is labelled seen (0) but predicted unseen 2: stays 0; pixels 1-4 predicted 2 with rising
    # confidence; pixel 5 predicted seen 1: stays ignore.
    img0 = _logits([(2, 5.0), (2, 1.0), (2, 2.0), (2, 3.0), (2, 4.0), (1, 3.0)])
    # image 1: three pixels predicted 3, one predicted 2 with a LOWER confidence than any of image 0's:
    # ranking is within the image, so it is still kept.
    img1 = _logits([(3, 2.0), (3, 1.0), (2, 0.5), (3, 3.0), (0, 1.0), (3, 0.1)])
    logits = torch.stack([img0, img1])                             # (2, 4, 1, 6)
    labels = torch.tensor([[[0, ignore, ignore, ignore, ignore, ignore]],
                           [[ignore, ignore, ignore, ignore, ignore, 1]]])
    out = top_percent_labels(labels, logits, num_seen=2, num_unseen=2, percent=50)
    # image 0, class 2: 4 candidates, ceil(2) = 2 kept: the two most confident (pixels 3, 4)
    assert out[0, 0].tolist() == [0, ignore, ignore, 2, 2, ignore]
    # image 1, class 3: candidates pixels 0, 1, 3 (pixel 5 is labelled seen 1): ceil(1.5) = 2 kept (3 and 0);
    # class 2: one candidate, ceil(0.5) = 1 kept
    assert out[1, 0].tolist() == [3, ignore, 2, 3, ignore, 1]
    # p = 100: every candidate; p = 25: ceil(1) = 1 per image and class
    full = top_percent_labels(labels, logits, 2, 2, 100)
    assert full[0, 0].tolist() == [0, 2, 2, 2, 2, ignore]
    quarter = top_percent_labels(labels, logits, 2, 2, 25)
    assert quarter[0, 0].tolist() == [0, ignore, ignore, ignore, 2, ignore]
    assert quarter[1, 0].tolist() == [ignore, ignore, 2, 3, ignore, 1]
    assert torch.equal(labels, torch.tensor([[[0, ignore, ignore, ignore, ignore, ignore]],
                                             [[ignore, ignore, ignore, ignore, ignore, 1]]]))   # input untouched


def test_top_percent_bad_arguments():
    labels = torch.full((1, 1, 2), 255)
    with pytest.raises(ValueError, match="percentage"):
        top_percent_labels(labels, torch.zeros(1, 4, 1, 2), 2, 2, 0)
    with pytest.raises(ValueError, match="C >="):
        top_percent_labels(labels, torch.zeros(1, 3, 1, 2), 2, 2, 50)
