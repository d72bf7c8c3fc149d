"""Training losses of CaGNet (docs/method.md §3): GAN losses, gradient penalty, classification loss and the MMD
content loss.

Every loss takes the layout the model produces: pixel matrices of the *visible* pixels (label != ignore) in
(n, i, j) raster order, i.e. scores (P, 1), logits (P, C), features (P, F) and labels (P,). Averages are over
those P pixels. A loss over an empty set of pixels returns ``None`` instead of NaN so the caller can skip the
batch (design rule 9). The KL term lives with the contextual module that produces mu/logvar.

Mixed precision (docs/method.md §8.7): every loss is computed in float32 from whatever precision the network ran
in: the sigmoid-score GAN terms (BCE of a bfloat16 probability near 0 or 1 loses its tail), the softmax
cross-entropy (log-sum-exp over C logits), the MMD's expanded distances (cancellation of 600-d squared norms).
"""
import contextlib
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

GAN_TYPES = ("lsgan", "gan", "wgan", "wgan-gp")
CONTENT_LOSSES = ("MMDLoss", "ContentLoss", "ContentLossMSE")

MMD_SIGMAS = (2, 5, 10, 20, 40, 60)

# Upper bound on the number of elements of one temporary pairwise matrix in the MMD kernel sums
# (2**24 float32 = 64 MiB). Bounds peak memory independently of how long a run of equal labels is.
_MMD_BLOCK_ELEMENTS = 1 << 24


def _check_gan_type(gan_type: str) -> None:
    if gan_type not in GAN_TYPES:
        raise ValueError(f"gan_type must be one of {GAN_TYPES}, got {gan_type!r}")


@contextlib.contextmanager
def _no_autocast(device_type: str):
    """Ops inside run in the precision of their inputs (float32 here), whatever autocast is active."""
    with torch.autocast(device_type=device_type, enabled=False):
        yield


def _full(x: torch.Tensor) -> torch.Tensor:
    """x in float32, or float64 if it is (tests); a no-op for float32 input."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _gan_term(score: torch.Tensor, target: float, gan_type: str) -> torch.Tensor:
    """Mean over pixels of the per-pixel GAN criterion for a constant target (1 = real, 0 = fake)."""
    score = _full(score)
    if gan_type == "lsgan":
        # Faithful to the original: 'lsgan' is an L1 distance between the sigmoid score and the
        # target, not a squared error (docs/method.md §3.2).
        per_pixel = (score - target).abs()
    elif gan_type == "gan":
        # BCE on a probability is refused by CUDA autocast (unsafe in float16); it runs in float32 here.
        with _no_autocast(score.device.type):
            per_pixel = F.binary_cross_entropy(score, torch.full_like(score, target), reduction="none")
    else:
        # Faithful to the original: the Wasserstein critic value is the *sigmoid* score.
        per_pixel = -score if target == 1.0 else score
    return per_pixel.sum() / score.shape[0]


def discriminator_gan_loss(score_real: torch.Tensor, score_fake: torch.Tensor,
                           gan_type: str = "lsgan") -> Optional[dict]:
    """Discriminator side of the GAN loss.

    Args:
        score_real: sigmoid scores (P, 1) of the (detached) real features of the visible pixels.
        score_fake: sigmoid scores (P, 1) of the (detached) fake features at the same pixels.
        gan_type: one of 'lsgan', 'gan', 'wgan', 'wgan-gp'.

    Returns:
        ``{'D_real': scalar, 'D_fake': scalar}`` whose sum is the discriminator's GAN loss, or ``None`` when
        P = 0. lsgan: D_real = mean|s_real - 1|, D_fake = mean s_fake; gan: binary cross-entropy to 1 / 0;
        wgan and wgan-gp: D_real = -mean s_real, D_fake = mean s_fake. For wgan-gp the caller adds
        :func:`gradient_penalty`, which needs the discriminator itself and therefore is not computed here.
    """
    _check_gan_type(gan_type)
    if score_real.shape != score_fake.shape:
        raise ValueError(f"score_real {tuple(score_real.shape)} and score_fake {tuple(score_fake.shape)} differ")
    if score_real.shape[0] == 0:
        return None
    return {"D_real": _gan_term(score_real, 1.0, gan_type), "D_fake": _gan_term(score_fake, 0.0, gan_type)}


def generator_gan_loss(score_fake: torch.Tensor, gan_type: str = "lsgan") -> Optional[torch.Tensor]:
    """Generator side of the GAN loss: the fake scores (P, 1) pushed towards 'real'.

    lsgan: mean|s - 1|; gan: BCE to 1; wgan / wgan-gp: -mean s. ``None`` when P = 0.
    """
    _check_gan_type(gan_type)
    if score_fake.shape[0] == 0:
        return None
    return _gan_term(score_fake, 1.0, gan_type)


def gradient_penalty(score_fn: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     image_index: torch.Tensor, num_images: int, weight: float = 10.0,
                     generator: Optional[torch.Generator] = None, alpha: Optional[torch.Tensor] = None
                     ) -> torch.Tensor:
    """WGAN-GP penalty on random interpolates of real and fake features (docs/method.md §3.3).

    alpha ~ U(0, 1) per image, x_hat = alpha * real + (1 - alpha) * fake; g = d score(x_hat) / d x_hat with
    grad_outputs = 1; ||g_n|| is the norm over every visible pixel and channel of image n (the original masks
    the gradient of the full map, which is the same); penalty = weight * mean_n (||g_n||_2 - 1)^2 over all
    num_images images (an image without visible pixels has norm 0). The graph is kept (create_graph=True) so the
    penalty trains the discriminator. Real and fake enter detached: the penalty is a discriminator loss.
    It is computed in float32 with autocast off: a second-order gradient of a sigmoid score in bfloat16/float16
    would quantise (or underflow) the norms it penalises.

    Args:
        score_fn: maps features (P, F) to sigmoid scores (P, 1); it must be pixel-wise.
        real, fake: features (P, F) of the visible pixels.
        image_index: (P,) the batch image of each pixel; num_images: N.
        weight: lambda_D_gp (10 in every config).
        generator: optional RNG for alpha (tests, reproducibility).
        alpha: the N mixing weights, when the caller draws them (several processes, models/shard.py).
    Returns 0 for num_images = 0 (a process holding no image of the global batch).
    """
    if real.shape != fake.shape or real.dim() != 2 or image_index.shape != real.shape[:1]:
        raise ValueError(f"expected real and fake (P, F) and image_index (P,), got {tuple(real.shape)}, "
                         f"{tuple(fake.shape)} and {tuple(image_index.shape)}")
    if alpha is None:
        alpha = torch.rand(num_images, generator=generator, dtype=_full(real).dtype,
                           device=real.device if generator is None else generator.device)
    if num_images == 0:
        return real.new_zeros((), dtype=torch.float32)
    a = alpha.to(real.device)[image_index].unsqueeze(1)
    with _no_autocast(real.device.type):
        x_hat = (a * _full(real.detach()) + (1.0 - a) * _full(fake.detach())).requires_grad_(True)
        score = _full(score_fn(x_hat))
        grad = torch.autograd.grad(outputs=score, inputs=x_hat, grad_outputs=torch.ones_like(score),
                                   create_graph=True, retain_graph=True)[0]
        squares = grad.new_zeros(num_images).index_add(0, image_index, grad.pow(2).sum(1))
        # sqrt only where the sum is positive, so an image without visible pixels cannot inject a NaN gradient.
        positive = squares > 0
        norms = torch.where(positive, torch.sqrt(torch.where(positive, squares, torch.ones_like(squares))),
                            torch.zeros_like(squares))
        return weight * ((norms - 1.0) ** 2).mean()


def classification_loss(logits: torch.Tensor, labels: torch.Tensor,
                        ignore_index: int = 255) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """Mean cross-entropy over labelled pixels, plus pixel accuracy.

    Args:
        logits: (P, C) classifier outputs.
        labels: (P,) integer class ids, ``ignore_index`` for unlabelled pixels.

    Returns:
        ``(loss, accuracy)``: loss is the mean CE over pixels with label != ignore_index (PyTorch's
        ignore_index semantics), accuracy = #(argmax == label) / #valid as a float tensor without grad;
        ``None`` when no pixel is labelled (the caller skips the batch).
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"expected logits (P, C) and labels (P,), got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    labels = labels.long()
    valid = labels != ignore_index
    num_valid = valid.sum()
    if int(num_valid) == 0:
        return None
    # The pixels go through cross_entropy as a (1, C, P, 1) map: the spatial kernel rounds differently from the
    # (P, C) one in the last bit, and this is the layout every number of this code base was produced with.
    pixels, classes = logits.shape
    logits = _full(logits)
    with _no_autocast(logits.device.type):
        loss = F.cross_entropy(logits.t().reshape(1, classes, pixels, 1), labels.reshape(1, pixels, 1),
                               ignore_index=ignore_index)
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


@dataclass(frozen=True)
class RunSummary:
    """What other processes need to know about one process's visible labels to continue MMD runs across it:
    the pixel count, the first and last label, the lengths of the first and last run, the number of runs."""
    count: int
    first: int = -1
    last: int = -1
    first_len: int = 0
    last_len: int = 0
    runs: int = 0

    @staticmethod
    def of(labels: torch.Tensor) -> "RunSummary":
        """labels: (P,) visible labels of one process in raster order."""
        if labels.numel() == 0:
            return RunSummary(0)
        values, counts = torch.unique_consecutive(labels, return_counts=True)
        values, counts = values.tolist(), counts.tolist()
        return RunSummary(int(labels.numel()), values[0], values[-1], counts[0], counts[-1], len(counts))

    def as_list(self) -> List[int]:
        return [self.count, self.first, self.last, self.first_len, self.last_len, self.runs]


@dataclass(frozen=True)
class RunPiece:
    """Rows of process `rank`'s pixels that continue a run of another process: its first or its last run."""
    rank: int
    which: str          # "first" | "last"
    length: int


@dataclass(frozen=True)
class BoundaryRuns:
    """How this process's runs continue into its neighbours' (several processes, one global raster order):
    `before` continues its first run backwards (in rank order), `after` its last run forwards; num_runs counts the
    runs of the whole global sequence."""
    before: Tuple[RunPiece, ...]
    after: Tuple[RunPiece, ...]
    num_runs: int

    @property
    def crosses(self) -> bool:
        return bool(self.before or self.after)


def plan_boundary_runs(summaries: Sequence[RunSummary], rank: int) -> BoundaryRuns:
    """The MMD runs of a global raster order held by processes in rank order (each its consecutive part), as seen
    by `rank`: a run continues across a process boundary when the last visible label before it equals the first
    one after it; processes without visible pixels are passed over, as ignored pixels are within one process."""
    own = summaries[rank]

    def continuation(step: int) -> Tuple[RunPiece, ...]:
        """Pieces of the processes after (step 1) or before (step -1) `rank` that continue its last/first run."""
        label = own.first if step < 0 else own.last
        pieces = []
        q = rank + step
        while own.count and 0 <= q < len(summaries):
            other = summaries[q]
            if other.count:
                if (other.last if step < 0 else other.first) != label:
                    break
                pieces.append(RunPiece(q, "last", other.last_len) if step < 0
                              else RunPiece(q, "first", other.first_len))
                if other.runs > 1:          # the run ends inside that process
                    break
            q += step
        return tuple(reversed(pieces)) if step < 0 else tuple(pieces)

    present = [s for s in summaries if s.count]
    joins = sum(1 for a, b in zip(present, present[1:]) if a.last == b.first)
    return BoundaryRuns(continuation(-1), continuation(1), sum(s.runs for s in present) - joins)


@dataclass
class RunContext:
    """The detached features (fakes, reals) of other processes' pixels that continue this process's first run
    (`before`, in raster order) and its last run (`after`), and the global number of runs."""
    before_fake: torch.Tensor
    before_real: torch.Tensor
    after_fake: torch.Tensor
    after_real: torch.Tensor
    num_runs: int


def mmd_content_loss(fake: torch.Tensor, real: torch.Tensor, labels: torch.Tensor,
                     sigmas: Sequence[float] = MMD_SIGMAS, context: Optional[RunContext] = None
                     ) -> Optional[torch.Tensor]:
    """MMD content loss between generated and real features (docs/method.md §3.5 'MMDLoss').

    Args:
        fake: generated features (P, F) of the visible pixels, in (n, i, j) raster order.
        real: real features (P, F) at the same pixels (the caller detaches them).
        labels: (P,) class ids of those pixels.
        sigmas: kernel bandwidths, k_sigma(a, b) = exp(-||a - b||^2 / (2 sigma)).
        context: with several processes, this process's pixels are one consecutive part of the global raster
            order, and a run can continue into the neighbouring parts (docs/method.md §3.5, §8.6). The run that
            continues from `before` is computed here with the other processes' pixels detached, so the gradient
            reaching this process's pixels is complete, but its value counts only on the process holding its
            first pixel; the sum is over this process's runs divided by context.num_runs. Summed over processes,
            values and gradients are those of the global loss.

    Returns:
        Mean over runs r of sqrt(A_r) (0 * A_r when A_r <= 0), with
        A_r = sum_sigma [mean_ij k(x_i, x_j) / 2 + mean_ij k(y_i, y_j) / 2 - mean_ij k(x_i, y_j)]
        over the run's fakes x and reals y; ``None`` when P = 0.

    Faithful to the original: the groups are not classes but maximal runs of consecutive equal labels
    in the raster order of the *visible* pixels, so runs continue across row ends, across ignored gaps and
    across images, and a class appearing in separated places forms several runs (docs/method.md §3.5). The
    original loops over pixels in Python; here runs are found with unique_consecutive and bucketed by length
    (power-of-two classes, padded to the bucket's longest run) so each bucket is one batched kernel computation.
    """
    if fake.shape != real.shape or fake.dim() != 2 or labels.shape != fake.shape[:1]:
        raise ValueError(f"expected fake and real (P, F) and labels (P,), got {tuple(fake.shape)}, "
                         f"{tuple(real.shape)} and {tuple(labels.shape)}")
    if fake.shape[0] == 0:
        return None
    # Below float32 the expanded distance ||a||^2 + ||b||^2 - 2ab loses too much precision.
    dtype = torch.promote_types(fake.dtype, torch.float32)
    x_all = fake.to(dtype)
    y_all = real.to(dtype)
    borrowed_first = False
    if context is not None:
        before, after = context.before_fake.shape[0], context.after_fake.shape[0]
        borrowed_first = before > 0
        x_all = torch.cat([context.before_fake.to(dtype).detach(), x_all, context.after_fake.to(dtype).detach()])
        y_all = torch.cat([context.before_real.to(dtype).detach(), y_all, context.after_real.to(dtype).detach()])
        labels = torch.cat([labels[:1].expand(before), labels, labels[-1:].expand(after)])
    lengths = _run_lengths(labels)
    starts = torch.cumsum(lengths, 0) - lengths
    lengths_cpu = lengths.cpu()
    buckets = torch.ceil(torch.log2(lengths_cpu.to(torch.float64))).to(torch.int64)

    run_losses, run_ids = [], []
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
            run_ids.append(chunk)
    if context is None:
        return torch.cat(run_losses).sum() / lengths.numel()
    losses = torch.cat(run_losses)
    if borrowed_first:
        # The run continued from `before` is counted by the process holding its first pixel: value 0 here,
        # gradient (for this process's pixels) kept.
        first = torch.cat(run_ids) == 0
        losses = torch.where(first, losses - losses.detach(), losses)
    return losses.sum() / context.num_runs


def l1_content_loss(fake: torch.Tensor, real: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The original's unused 'ContentLoss': mean absolute difference over the visible pixels' features."""
    return (fake - real).abs().mean()


def mse_content_loss(fake: torch.Tensor, real: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The original's unused 'ContentLossMSE': mean squared difference over the visible pixels' features."""
    return (fake - real).pow(2).mean()


# ---- ZS3Net's GMMN loss (baselines-spec §2.2) ----------------------------------------------------------------
# Bandwidths of ZS3's code (train_pascal_GMMN.py); its paper and CaGNet use 60 instead of 80 (zs3_mmd_sigmas).
GMMN_SIGMAS = (2, 5, 10, 20, 40, 80)


def gmmn_mmd_loss(fake: torch.Tensor, real: torch.Tensor, sigmas: Sequence[float] = GMMN_SIGMAS) -> torch.Tensor:
    """ZS3's GMMN loss between two sample sets (utils/loss.py there), one class at a time.

    Args:
        fake: (M, F) generated features; real: (N, F) real features of the same class (the caller detaches them).
        sigmas: kernel bandwidths, k_sigma(a, b) = exp(-||a - b||^2 / (2 sigma)) (sigma acts as a variance).

    Returns:
        sqrt(sum_sigma [mean k(fake, fake) + mean k(real, real) - 2 mean k(fake, real)]): the biased MMD^2 over X =
        [fake; real] summed over the bandwidths, then the square root (0 * that sum when it is <= 0, so the
        gradient stays finite at 0). Computed in float32 (or float64 for float64 input) with true float32
        products, whatever autocast is active.
    """
    if fake.dim() != 2 or real.dim() != 2 or fake.shape[1] != real.shape[1] or not len(fake) or not len(real):
        raise ValueError(f"expected non-empty fake (M, F) and real (N, F), got {tuple(fake.shape)} and "
                         f"{tuple(real.shape)}")
    if not len(sigmas):
        raise ValueError("gmmn_mmd_loss needs at least one bandwidth")
    dtype = torch.promote_types(fake.dtype, torch.float32)
    with _full_precision_matmul(fake.device.type):
        x = torch.cat([fake.to(dtype), real.to(dtype)])
        sq = (x * x).sum(1)
        d2 = (sq[:, None] + sq[None, :] - 2.0 * x @ x.t()).clamp_min(0.0)
        m = fake.shape[0]
        # weights of the biased estimator: +1/M^2 on fake-fake, +1/N^2 on real-real, -1/(MN) on each cross block
        s = torch.cat([torch.full((m,), 1.0 / m, dtype=dtype, device=x.device),
                       torch.full((real.shape[0],), -1.0 / real.shape[0], dtype=dtype, device=x.device)])
        weights = s[:, None] * s[None, :]
        total = sum((torch.exp(-d2 / (2.0 * float(sigma))) * weights).sum() for sigma in sigmas)
    positive = total > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, total, torch.ones_like(total))), 0.0 * total)
