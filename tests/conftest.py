"""Fixtures shared by the whole suite: tiny models that run the paper model's code paths in milliseconds.

Tiny datasets in the real on-disk layout come from tests/datagen.py, tiny configs for end-to-end runs through
train.py from tests/e2e_config.py. Tests that start processes (train.py, torchrun, the demo) are marked `slow`;
`make test-fast` runs the others.
"""
import pytest
import torch

from models.cagnet import build_cagnet
from models.initialization import init_weights

TINY = dict(feat_dim=16, n_blocks=(1, 1, 1, 1), base_width=4, atrous_rates=(1, 2, 3, 4), context_width=8,
            gen_hidden=(24, 20), gen_dropout=(0.1, 0.3), dis_hidden=24)


def tiny_embeddings(num_seen=3, num_unseen=2, dim=12, seed=0):
    """(Em_vis (256, dim), Em_all (S+U, dim)): random unit rows, zero rows beyond S in Em_vis."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.nn.functional.normalize(torch.randn(num_seen + num_unseen, dim, generator=g), dim=1)
    seen = torch.zeros(256, dim)
    seen[:num_seen] = rows[:num_seen]
    return seen, rows


def build_tiny_model(num_seen=3, num_unseen=2, seed=0, **overrides):
    torch.manual_seed(seed)
    seen, all_rows = tiny_embeddings(num_seen, num_unseen)
    model = build_cagnet(seen, all_rows, num_seen + num_unseen + 1, **{**TINY, **overrides})
    init_weights(model, "kaiming")
    return model


@pytest.fixture
def tiny_model():
    """A factory: tiny_model(num_seen=3, num_unseen=2, seed=0, **build_cagnet overrides) -> He-initialised CaGNet."""
    return build_tiny_model
