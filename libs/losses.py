"""Training losses of CaGNet (method-spec §3.1): masked GAN losses, gradient penalty, masked
classification loss and the MMD content loss.

Every loss is computed at feature resolution and averaged over *visible* pixels only (label != ignore).
A loss over an empty set of pixels returns ``None`` instead of NaN so the caller can skip the batch
(design rule 9). The KL term lives with the contextual module that produces mu/logvar.
"""
import contextlib
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

GAN_TYPES = ("lsgan", "gan", "wgan", "wgan-gp")

MMD_SIGMAS = (2, 5, 10, 20, 40, 60)

# Upper bound on the number of elements of one temporary pairwise matrix in the MMD kernel sums
# (2**24 float32 = 64 MiB). Bounds peak memory independently of how long a run of equal labels is.
_MMD_BLOCK_ELEMENTS = 1 << 24


def _check_gan_type(gan_type: str) -> None:
    if gan_type not in GAN_TYPES:
        raise ValueError(f"gan_type must be one of {GAN_TYPES}, got {gan_type!r}")


def _score_mask(score: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Bring a visibility mask (N, h, w) or (N, 1, h, w) to the score's shape (N, 1, h, w) as a float."""
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    if mask.shape != score.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match score shape {tuple(score.shape)}")
    return mask.to(dtype=score.dtype)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum()


def _gan_term(score: torch.Tensor, mask: torch.Tensor, target: float, gan_type: str) -> torch.Tensor:
    """Masked mean of the per-pixel GAN criterion for a constant target (1 = real, 0 = fake)."""
    if gan_type == "lsgan":
        # Faithful to the original: 'lsgan' is an L1 distance between the sigmoid score and the
        # target, not a squared error (method-spec §11.5).
        per_pixel = (score - target).abs()
    elif gan_type == "gan":
        per_pixel = F.binary_cross_entropy(score, torch.full_like(score, target), reduction="none")
    else:
        # Faithful to the original: the Wasserstein critic value is the *sigmoid* score.
        per_pixel = -score if target == 1.0 else score
    return _masked_mean(per_pixel, mask)


def discriminator_gan_loss(score_real: torch.Tensor, score_fake: torch.Tensor, mask: torch.Tensor,
                           gan_type: str = "lsgan") -> Optional[dict]:
    """Discriminator side of the masked GAN loss.

    Args:
        score_real: sigmoid scores of the (detached) real features, (N, 1, h, w).
        score_fake: sigmoid scores of the (detached) fake features, (N, 1, h, w).
        mask: visibility, bool (N, h, w) or (N, 1, h, w); only visible pixels are averaged.
        gan_type: one of 'lsgan', 'gan', 'wgan', 'wgan-gp'.

    Returns:
        ``{'D_real': scalar, 'D_fake': scalar}`` whose sum is the discriminator's GAN loss, or
        ``None`` when no pixel is visible. lsgan: D_real = mean|s_real - 1|, D_fake = mean s_fake;
        gan: binary cross-entropy to 1 / 0; wgan and wgan-gp: D_real = -mean s_real,
        D_fake = mean s_fake. For wgan-gp the caller adds :func:`gradient_penalty`, which needs the
        discriminator itself and therefore is not computed here.
    """
    _check_gan_type(gan_type)
    mask_real = _score_mask(score_real, mask)
    mask_fake = _score_mask(score_fake, mask)
    if not bool(mask_real.any()):
        return None
    return {
        "D_real": _gan_term(score_real, mask_real, 1.0, gan_type),
        "D_fake": _gan_term(score_fake, mask_fake, 0.0, gan_type),
    }


def generator_gan_loss(score_fake: torch.Tensor, mask: torch.Tensor,
                       gan_type: str = "lsgan") -> Optional[torch.Tensor]:
    """Generator side of the masked GAN loss: the fake scores (N, 1, h, w) pushed towards 'real'.

    lsgan: mean|s - 1|; gan: BCE to 1; wgan / wgan-gp: -mean s. Averaged over visible pixels of
    ``mask`` ((N, h, w) or (N, 1, h, w)); ``None`` when no pixel is visible.
    """
    _check_gan_type(gan_type)
    mask_fake = _score_mask(score_fake, mask)
    if not bool(mask_fake.any()):
        return None
    return _gan_term(score_fake, mask_fake, 1.0, gan_type)


def gradient_penalty(score_fn: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor,
                     fake: torch.Tensor, mask: torch.Tensor, weight: float = 10.0,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """WGAN-GP penalty on random interpolates of real and fake features (method-spec §3.1).

    alpha ~ U(0, 1) per sample, x_hat = alpha * real + (1 - alpha) * fake; g = d score(x_hat) / d x_hat
    with grad_outputs = 1, multiplied by the visibility mask broadcast over the channels, flattened per
    sample; penalty = weight * mean_n (||g_n||_2 - 1)^2. The graph is kept (create_graph=True) so the
    penalty trains the discriminator. Real and fake enter detached: the penalty is a discriminator loss.

    Args:
        score_fn: maps features (N, F, h, w) to sigmoid scores (N, 1, h, w).
        real, fake: features (N, F, h, w).
        mask: visibility, bool (N, h, w) or (N, 1, h, w).
        weight: lambda_D_gp (10 in every config).
        generator: optional RNG for alpha (tests, reproducibility).
    """
    if real.shape != fake.shape:
        raise ValueError(f"real shape {tuple(real.shape)} != fake shape {tuple(fake.shape)}")
    n = real.shape[0]
    alpha = torch.rand((n, 1, 1, 1), generator=generator, dtype=real.dtype,
                       device=real.device if generator is None else generator.device).to(real.device)
    x_hat = (alpha * real.detach() + (1.0 - alpha) * fake.detach()).requires_grad_(True)
    score = score_fn(x_hat)
    grad = torch.autograd.grad(outputs=score, inputs=x_hat, grad_outputs=torch.ones_like(score),
                               create_graph=True, retain_graph=True)[0]
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    grad = grad * mask.to(dtype=grad.dtype)
    norms = grad.reshape(n, -1).norm(2, dim=1)
    return weight * ((norms - 1.0) ** 2).mean()


def classification_loss(logits: torch.Tensor, labels: torch.Tensor,
                        ignore_index: int = 255) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """Mean cross-entropy over labelled pixels, plus pixel accuracy.

    Args:
        logits: (N, C, h, w) classifier outputs.
        labels: (N, h, w) integer class ids, ``ignore_index`` for unlabelled pixels.

    Returns:
        ``(loss, accuracy)``: loss is the mean CE over pixels with label != ignore_index (PyTorch's
        ignore_index semantics), accuracy = #(argmax == label) / #valid as a float tensor without grad;
        ``None`` when no pixel is labelled (the caller skips the batch).
    """
    if logits.dim() != 4 or labels.shape != (logits.shape[0],) + tuple(logits.shape[2:]):
        raise ValueError(f"expected logits (N, C, h, w) and labels (N, h, w), got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    labels = labels.long()
    valid = labels != ignore_index
    num_valid = valid.sum()
    if int(num_valid) == 0:
        return None
    loss = F.cross_entropy(logits, labels, ignore_index=ignore_index)
    with torch.no_grad():
        correct = ((logits.argmax(dim=1) == labels) & valid).sum()
        accuracy = correct.to(torch.float32) / num_valid.to(torch.float32)
    return loss, accuracy


@contextlib.contextmanager
def _full_precision_matmul(device_type: str):
    """Disable autocast and TF32 for the expanded distance ||a||^2 + ||b||^2 - 2ab: with 600-d features
    the cancellation needs true float32 products (TF32's 10-bit mantissa would err by ~0.1 in d^2)."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    finally:
        torch.set_float32_matmul_precision(previous)


class _PairKernelSum(torch.autograd.Function):
    """s_b = sum_sigma sum_{i,j} valid_a[b,i] valid_b[b,j] exp(-||a_bi - b_bj||^2 / (2 sigma)).

    a: (B, L, F), b: (B, M, F), valid_a: (B, L), valid_b: (B, M) -> s: (B,).
    Why a custom Function: letting autograd record the kernel would store several (B, L, M) matrices
    per sigma for the backward pass; a run of equal labels can be thousands of pixels long. Here the
    forward saves only the inputs and the backward recomputes the kernel block by block, using
    d k / d a_i = -k (a_i - b_j) / sigma, so peak memory is a few blocks of _MMD_BLOCK_ELEMENTS.
    """

    @staticmethod
    def _blocks(a, b, valid_a, valid_b):
        """Yield, per block of rows of a: the row slice, squared distances (B, r, M), pair validity."""
        batch, length, _ = a.shape
        cols = b.shape[1]
        rows_per_block = max(1, min(length, _MMD_BLOCK_ELEMENTS // max(1, batch * cols)))
        sq_b = (b * b).sum(-1)
        for start in range(0, length, rows_per_block):
            rows = slice(start, start + rows_per_block)
            a_blk = a[:, rows]
            sq_a = (a_blk * a_blk).sum(-1)
            dist = (sq_a.unsqueeze(2) + sq_b.unsqueeze(1) - 2.0 * torch.bmm(a_blk, b.transpose(1, 2)))
            dist = dist.clamp_min_(0.0)
            pair_mask = valid_a[:, rows].unsqueeze(2) & valid_b.unsqueeze(1)
            yield rows, dist, pair_mask

    @staticmethod
    def forward(ctx, a, b, valid_a, valid_b, sigmas):
        ctx.sigmas = tuple(float(s) for s in sigmas)
        ctx.save_for_backward(a, b, valid_a, valid_b)
        total = a.new_zeros(a.shape[0])
        with _full_precision_matmul(a.device.type):
            for _, dist, pair_mask in _PairKernelSum._blocks(a, b, valid_a, valid_b):
                kernel = torch.zeros_like(dist)
                for sigma in ctx.sigmas:
                    kernel += torch.exp(dist / (-2.0 * sigma))
                total += (kernel * pair_mask).sum(dim=(1, 2))
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total):
        a, b, valid_a, valid_b = ctx.saved_tensors
        need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_a = torch.zeros_like(a) if need_a else None
        grad_b = torch.zeros_like(b) if need_b else None
        if not (need_a or need_b):
            return None, None, None, None, None
        scale = grad_total.reshape(-1, 1, 1).to(a.dtype)
        with _full_precision_matmul(a.device.type):
            for rows, dist, pair_mask in _PairKernelSum._blocks(a, b, valid_a, valid_b):
                weight = torch.zeros_like(dist)
                for sigma in ctx.sigmas:
                    weight += torch.exp(dist / (-2.0 * sigma)) / sigma
                weight = weight * pair_mask * scale
                a_blk = a[:, rows]
                if need_a:
                    grad_a[:, rows] = torch.bmm(weight, b) - weight.sum(2, keepdim=True) * a_blk
                if need_b:
                    grad_b += torch.bmm(weight.transpose(1, 2), a_blk) - weight.sum(1).unsqueeze(2) * b
        return grad_a, grad_b, None, None, None


def _run_lengths(labels_1d: torch.Tensor) -> torch.Tensor:
    """Lengths of the maximal runs of consecutive equal values in a 1-D tensor."""
    _, counts = torch.unique_consecutive(labels_1d, return_counts=True)
    return counts


def mmd_content_loss(fake: torch.Tensor, real: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                     sigmas: Sequence[float] = MMD_SIGMAS) -> Optional[torch.Tensor]:
    """MMD content loss between generated and real features (method-spec §3.1 'MMDLoss').

    Args:
        fake: generated features (N, F, h, w).
        real: real features (N, F, h, w) (the caller detaches them).
        labels: (N, h, w) class ids; mask: visibility, bool (N, h, w) or (N, 1, h, w).
        sigmas: kernel bandwidths, k_sigma(a, b) = exp(-||a - b||^2 / (2 sigma)).

    Returns:
        Mean over runs r of sqrt(A_r) (0 * A_r when A_r <= 0), with
        A_r = sum_sigma [mean_ij k(x_i, x_j) / 2 + mean_ij k(y_i, y_j) / 2 - mean_ij k(x_i, y_j)]
        over the run's fakes x and reals y; ``None`` when no pixel is visible.

    Faithful to the original: the groups are not classes but maximal runs of consecutive equal labels
    in the (n, i, j) raster order of the *visible* pixels, so runs continue across row ends, across
    ignored gaps and across images, and a class appearing in separated places forms several runs
    (method-spec §11.6). The original loops over pixels in Python; here runs are found with
    unique_consecutive and bucketed by length (power-of-two classes, padded to the bucket's longest
    run) so each bucket is one batched kernel computation.
    """
    if fake.shape != real.shape or fake.dim() != 4:
        raise ValueError(f"fake and real must both be (N, F, h, w), got {tuple(fake.shape)} and "
                         f"{tuple(real.shape)}")
    n, channels, h, w = fake.shape
    if mask.dim() == 4:
        mask = mask.squeeze(1)
    if labels.shape != (n, h, w) or mask.shape != (n, h, w):
        raise ValueError(f"labels and mask must be (N, h, w) = {(n, h, w)}, got {tuple(labels.shape)} "
                         f"and {tuple(mask.shape)}")
    visible = mask.reshape(-1).bool()
    if not bool(visible.any()):
        return None
    # Below float32 the expanded distance ||a||^2 + ||b||^2 - 2ab loses too much precision.
    dtype = torch.promote_types(fake.dtype, torch.float32)
    x_all = fake.permute(0, 2, 3, 1).reshape(-1, channels)[visible].to(dtype)
    y_all = real.permute(0, 2, 3, 1).reshape(-1, channels)[visible].to(dtype)
    lengths = _run_lengths(labels.reshape(-1)[visible])
    starts = torch.cumsum(lengths, 0) - lengths
    lengths_cpu = lengths.cpu()
    buckets = torch.ceil(torch.log2(lengths_cpu.to(torch.float64))).to(torch.int64)

    run_losses = []
    for bucket in torch.unique(buckets).tolist():
        members = torch.nonzero(buckets == bucket).flatten()
        max_len = int(lengths_cpu[members].max())
        # Several runs per batched call, at most _MMD_BLOCK_ELEMENTS kernel entries per call.
        per_call = max(1, _MMD_BLOCK_ELEMENTS // (max_len * max_len))
        for chunk in torch.split(members.to(lengths.device), per_call):
            run_len = lengths[chunk]
            offsets = torch.arange(max_len, device=lengths.device)
            valid = offsets.unsqueeze(0) < run_len.unsqueeze(1)                      # (B, Lmax)
            index = starts[chunk].unsqueeze(1) + torch.where(valid, offsets, torch.zeros_like(offsets))
            keep = valid.unsqueeze(2).to(dtype)
            x = x_all[index] * keep                                                  # (B, Lmax, F)
            y = y_all[index] * keep
            k_xx = _PairKernelSum.apply(x, x, valid, valid, sigmas)
            k_yy = _PairKernelSum.apply(y, y, valid, valid, sigmas)
            k_xy = _PairKernelSum.apply(x, y, valid, valid, sigmas)
            pairs = run_len.to(dtype) ** 2
            value = 0.5 * (k_xx / pairs) + 0.5 * (k_yy / pairs) - k_xy / pairs       # A_r, (B,)
            positive = value > 0
            # sqrt only where A_r > 0 so the unused branch cannot inject NaN gradients.
            root = torch.sqrt(torch.where(positive, value, torch.ones_like(value)))
            run_losses.append(torch.where(positive, root, 0.0 * value))
    return torch.cat(run_losses).sum() / lengths.numel()
