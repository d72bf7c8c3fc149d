"""Self-training pseudo-labels for the `st` schedule (docs/method.md §5.4).

Unlabelled pixels (ignore) whose top-ranked classifier outputs include an unseen class get the
best-ranked unseen test id as label; pixels with a seen label keep it. There is no confidence
threshold: ``top_p = 1`` labels exactly the pixels whose arg-max is an unseen class.

ZS3Net+ST (`top_percent_labels`, docs/baselines.md) ranks by confidence instead: the top p% of each
image's pixels predicted as each unseen class.
"""
import math

import torch


def self_training_labels(train_labels: torch.Tensor, logits: torch.Tensor, num_seen: int, num_unseen: int,
                         top_p: int, ignore_index: int = 255) -> torch.Tensor:
    """Label map with pseudo-labels for the next step-1 iteration.

    Args:
        train_labels: (N, h, w) train ids at feature resolution, values 0..S-1 or ``ignore_index``.
        logits: (N, C, h, w) classifier outputs from the model in test mode, C = S + U + 1.
        num_seen, num_unseen: S and U.
        top_p: how many of each pixel's best-ranked classes are inspected.

    Returns:
        (N, h, w) tensor of train_labels' dtype and device: seen labels unchanged; each ignored pixel
        whose top_p ranked ids contain an unseen test id (S..S+U-1) gets the best-ranked one, otherwise
        stays ``ignore_index``. The dead channel C-1 and seen ids take part in the ranking (they occupy
        ranks) but are never assigned.

    Ranking is a descending sort over all C logits. Faithful to the original: pseudo-labels may land on
    background, void and crop-padding pixels, which are all ignore here (docs/method.md §9 K10).
    The sort is stable, so exactly equal logits rank the lower class id first on every device; the
    original's tie order is unspecified and exact ties between float logits do not occur in practice.
    """
    s, u = int(num_seen), int(num_unseen)
    if logits.dim() != 4 or logits.shape[1] != s + u + 1:
        raise ValueError(f"logits must be (N, C, h, w) with C = num_seen + num_unseen + 1 = {s + u + 1}, "
                         f"got {tuple(logits.shape)}")
    if train_labels.shape != (logits.shape[0],) + tuple(logits.shape[2:]):
        raise ValueError(f"train_labels shape {tuple(train_labels.shape)} does not match logits "
                         f"(N, h, w) = {(logits.shape[0],) + tuple(logits.shape[2:])}")
    if not 1 <= int(top_p) <= logits.shape[1]:
        raise ValueError(f"top_p must be in 1..{logits.shape[1]}, got {top_p}")
    with torch.no_grad():
        ranked = torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :int(top_p)]
        is_unseen = (ranked >= s) & (ranked < s + u)                          # (N, top_p, h, w)
        # argmax returns the first maximal entry, i.e. the best-ranked unseen id.
        best = is_unseen.to(torch.uint8).argmax(dim=1, keepdim=True)
        pseudo = ranked.gather(1, best).squeeze(1)
        assign = (train_labels == ignore_index) & is_unseen.any(dim=1)
        return torch.where(assign, pseudo.to(train_labels.dtype), train_labels)


def top_percent_labels(train_labels: torch.Tensor, logits: torch.Tensor, num_seen: int, num_unseen: int,
                       percent: float, ignore_index: int = 255) -> torch.Tensor:
    """ZS3Net+ST's pseudo-labels (baselines-spec §3, chosen rule 1): the top `percent` % most confident unseen
    predictions per image and per unseen class.

    Args:
        train_labels: (N, h, w) train ids at the logits' resolution, 0..S-1 or ``ignore_index``.
        logits: (N, C, h, w) with C >= S + U; channels beyond S + U (CaGNet's dead one) take no part.
        percent: p in (0, 100].

    Returns:
        (N, h, w): seen labels unchanged. Candidates are the ignored pixels whose argmax over the S + U classes is
        an unseen test id u; within each image and each u, the ceil(p/100 * count) candidates with the highest
        softmax probability of u get label u, the others stay ``ignore_index``. Equal probabilities keep the
        lower pixel index first (stable sort), so the result is the same on every device.
    """
    s, u = int(num_seen), int(num_unseen)
    if logits.dim() != 4 or logits.shape[1] < s + u:
        raise ValueError(f"logits must be (N, C, h, w) with C >= num_seen + num_unseen = {s + u}, "
                         f"got {tuple(logits.shape)}")
    if train_labels.shape != (logits.shape[0],) + tuple(logits.shape[2:]):
        raise ValueError(f"train_labels shape {tuple(train_labels.shape)} does not match logits "
                         f"(N, h, w) = {(logits.shape[0],) + tuple(logits.shape[2:])}")
    if not 0 < float(percent) <= 100:
        raise ValueError(f"the pseudo-label percentage must be in (0, 100], got {percent}")
    with torch.no_grad():
        probabilities = torch.softmax(logits[:, :s + u].float(), dim=1)
        confidence, predicted = probabilities.max(dim=1)                      # (N, h, w)
        candidate = (train_labels == ignore_index) & (predicted >= s)
        out = train_labels.clone().reshape(train_labels.shape[0], -1)
        predicted, confidence, candidate = (t.reshape(t.shape[0], -1) for t in (predicted, confidence, candidate))
        for n in range(out.shape[0]):
            for cls in torch.unique(predicted[n][candidate[n]]).tolist():
                where = (candidate[n] & (predicted[n] == cls)).nonzero().squeeze(1)
                keep = math.ceil(float(percent) / 100.0 * where.numel())
                order = torch.sort(confidence[n][where], descending=True, stable=True).indices[:keep]
                out[n, where[order]] = cls
        return out.reshape(train_labels.shape)
