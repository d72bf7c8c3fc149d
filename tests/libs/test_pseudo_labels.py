import pytest
import torch

from libs.pseudo_labels import self_training_labels

S, U = 2, 2          # ids 0, 1 seen; 2, 3 unseen; channel 4 is the dead output (C = 5)
LABELS = torch.tensor([[[255, 255, 255], [1, 0, 255]]])
PIXEL_LOGITS = [
    [0, 1, 5, 2, 3],   # ranks 2, 4, 1, ...      -> unseen 2 is the arg-max
    [5, 1, 0, 2, 3],   # ranks 0, 4, 3, 1, 2     -> first unseen (3) at rank 3
    [0, 0, 0, 0, 9],   # ranks 4, 0, 1, 2, 3     -> dead channel first, ties in id order
    [0, 0, 9, 0, 0],   # seen label 1 stays although unseen 2 is the arg-max
    [9, 0, 0, 8, 0],   # seen label 0 stays
    [1, 2, 3, 4, 0],   # ranks 3, 2, ...         -> 3, the better-ranked of the two unseen ids
]
LOGITS = torch.tensor(PIXEL_LOGITS, dtype=torch.float32).T.reshape(1, 5, 2, 3)


def test_top1_only_where_unseen_is_argmax():
    out = self_training_labels(LABELS, LOGITS, S, U, top_p=1)
    assert out.tolist() == [[[2, 255, 255], [1, 0, 3]]]
    assert out.dtype == LABELS.dtype


def test_top3_best_ranked_unseen_and_dead_channel_never_chosen():
    out = self_training_labels(LABELS, LOGITS, S, U, top_p=3)
    assert out.tolist() == [[[2, 3, 255], [1, 0, 3]]]
    out = self_training_labels(LABELS, LOGITS, S, U, top_p=4)   # pixel 2: ranks 4, 0, 1, 2 -> 2
    assert out.tolist() == [[[2, 3, 2], [1, 0, 3]]]
    assert (out != 4).all()


def test_matches_per_pixel_reference_on_random_logits():
    gen = torch.Generator().manual_seed(0)
    s, u = 3, 4
    logits = torch.randn(2, s + u + 1, 5, 6, generator=gen)
    logits[:, -1] += 1.0   # the dead channel is often near the top
    labels = torch.randint(0, s, (2, 5, 6), generator=gen)
    labels[torch.rand(2, 5, 6, generator=gen) < 0.6] = 255
    for top_p in (1, 2, 5, 8):
        out = self_training_labels(labels, logits, s, u, top_p)
        for n in range(2):
            for i in range(5):
                for j in range(6):
                    expected = int(labels[n, i, j])
                    if expected == 255:
                        ranked = torch.argsort(logits[n, :, i, j], descending=True)[:top_p].tolist()
                        unseen = [c for c in ranked if s <= c < s + u]
                        expected = unseen[0] if unseen else 255
                    assert int(out[n, i, j]) == expected
    assert not torch.equal(self_training_labels(labels, logits, s, u, 8), labels)


def test_bad_arguments():
    with pytest.raises(ValueError, match="top_p"):
        self_training_labels(LABELS, LOGITS, S, U, top_p=0)
    with pytest.raises(ValueError, match="C = num_seen"):
        self_training_labels(LABELS, LOGITS, S, U + 1, top_p=1)
    with pytest.raises(ValueError, match="train_labels"):
        self_training_labels(LABELS[:, :1], LOGITS, S, U, top_p=1)
