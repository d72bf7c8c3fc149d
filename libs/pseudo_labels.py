"""Self-training pseudo-labels for the `st` schedule (docs/method.md §5.4).

Unlabelled pixels (ignore) whose top-ranked classifier outputs include an unseen class get the
best-ranked unseen test id as label; pixels with a seen label keep it. There is no confidence
threshold: ``top_p = 1`` labels exactly the pixels whose arg-max is an unseen class.
"""
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
