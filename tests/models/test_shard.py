"""A process's rows of the global batch's random draws (models/shard.py): exactly the rows of the draws one
process makes for the whole batch, and the generator left where that one process leaves it."""
import pytest
import torch
import torch.nn.functional as F

from models import shard
from models.shard import Rows


def _draw(fn):
    """fn's result and the generator state after it, from a fixed state."""
    torch.manual_seed(4)
    out = fn()
    return out, torch.get_rng_state()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_rows_are_the_rows_of_the_global_dropout(dtype):
    x = torch.rand(10, 7).to(dtype) + 1
    whole, state = _draw(lambda: F.dropout(x, 0.3, True))
    for rows in (Rows(0, 4, 10), Rows(4, 6, 10), Rows(10, 0, 10)):
        part, part_state = _draw(lambda: shard.dropout(rows.take(x), 0.3, True, rows))
        assert torch.equal(part, rows.take(whole))
        assert torch.equal(part_state, state)
    same, same_state = _draw(lambda: shard.dropout(x, 0.3, True, None))
    assert torch.equal(same, whole) and torch.equal(same_state, state)
    assert torch.equal(shard.dropout(x[:3], 0.3, False, Rows(0, 3, 10)), x[:3])      # eval mode: no draw


def test_noise_labels_and_uniforms_are_rows_of_the_global_draws():
    rows = Rows(3, 2, 6)
    cases = [
        (lambda r, n: shard.randn((n, 5, 2, 2), r), lambda: torch.randn(6, 5, 2, 2)),
        (lambda r, n: shard.rand(n, r), lambda: torch.rand(6)),
        (lambda r, n: shard.multinomial(torch.tensor([1.0, 2.0, 7.0]), n, r),
         lambda: torch.multinomial(torch.tensor([1.0, 2.0, 7.0]), 6, replacement=True)),
    ]
    for sharded, whole in cases:
        reference, state = _draw(whole)
        part, part_state = _draw(lambda: sharded(rows, rows.count))
        assert torch.equal(part, rows.take(reference)) and torch.equal(part_state, state)
        alone, _ = _draw(lambda: sharded(None, 6))
        assert torch.equal(alone, reference)


def test_rows_split_and_share():
    assert Rows.split([3, 0, 5], 2) == Rows(3, 5, 8)
    assert Rows.split([3, 0, 5], 1).share == 0.0 and Rows(3, 5, 8).share == 5 / 8
    with pytest.raises(ValueError, match="not inside"):
        Rows(5, 4, 8)
