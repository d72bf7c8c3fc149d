"""Tiny CaGNet models for tests: same code paths as the paper's model, milliseconds to run."""
import torch

from models.cagnet import build_cagnet, init_weights

TINY = dict(feat_dim=16, n_blocks=(1, 1, 1, 1), base_width=4, atrous_rates=(1, 2, 3, 4), context_width=8,
            gen_hidden=(24, 20), gen_dropout=(0.1, 0.3), dis_hidden=24)


def tiny_embeddings(num_seen=3, num_unseen=2, dim=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = torch.nn.functional.normalize(torch.randn(num_seen + num_unseen, dim, generator=g), dim=1)
    seen = torch.zeros(256, dim)
    seen[:num_seen] = rows[:num_seen]
    return seen, rows


def tiny_model(num_seen=3, num_unseen=2, seed=0, **overrides):
    torch.manual_seed(seed)
    seen, all_rows = tiny_embeddings(num_seen, num_unseen)
    model = build_cagnet(seen, all_rows, num_seen + num_unseen + 1, **{**TINY, **overrides})
    init_weights(model, "kaiming")
    return model
