"""The batch stream: global batches cut from the epoch permutation, each rank's consecutive part of them, exact
resume, and no draw from the global torch RNG (docs/method.md §6.4, §8.5, §8.6)."""
import numpy as np
import pytest
import torch

from libs.datasets.stream import BatchStream, rank_share


class Items(torch.utils.data.Dataset):
    """Item i of epoch e: an image filled with 100 e + i and a label filled with i."""
    crop_size = 3

    def __init__(self, n):
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.full((3, 3, 3), 100.0 * self.epoch + i), torch.full((3, 3), i, dtype=torch.int64)


def ids(batch):
    return batch[1][:, 0, 0].tolist()


def test_rank_share_gives_consecutive_near_equal_parts():
    assert [list(rank_share(11, r, 3)) for r in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert [list(rank_share(1, r, 2)) for r in range(2)] == [[0], []]


def test_one_process_batches_are_the_epoch_permutation_in_batches():
    stream = BatchStream(Items(10), 4, 0, seed=3)
    perm = np.random.default_rng([3, 0]).permutation(10).tolist()
    assert [ids(stream.next()) for _ in range(3)] == [perm[:4], perm[4:8], perm[8:]]   # no drop_last
    batch = stream.next()                                                               # epoch 1
    assert ids(batch) == np.random.default_rng([3, 1]).permutation(10).tolist()[:4]
    assert batch[0][0, 0, 0, 0].item() == 100 + ids(batch)[0]


@pytest.mark.parametrize("world", [2, 4])
def test_the_ranks_parts_in_rank_order_are_the_one_process_batch(world):
    one = BatchStream(Items(9), 4, 0, seed=1)
    ranks = [BatchStream(Items(9), 4, 0, seed=1, rank=r, world_size=world) for r in range(world)]
    for _ in range(6):                            # batches of 4, 4, 1 per epoch: the 1 leaves ranks empty
        reference = one.next()
        parts = [stream.next() for stream in ranks]
        assert sum((ids(p) for p in parts), []) == ids(reference)
        assert torch.equal(torch.cat([p[0] for p in parts]), reference[0])
        for p in parts:
            assert p[0].shape[1:] == (3, 3, 3) and p[1].shape[1:] == (3, 3)
        assert all(s.state_dict() == one.state_dict() for s in ranks)
    assert sum(len(ids(p)) == 0 for p in parts) == world - 1      # the last was the epoch's batch of 1


def test_global_batch_must_divide_over_the_processes():
    with pytest.raises(ValueError, match="BATCH_SIZE.TRAIN 6 cannot be split over 4 processes"):
        BatchStream(Items(9), 6, 0, seed=0, rank=0, world_size=4)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_and_epoch_starts_leave_the_global_rng_alone(workers):
    stream = BatchStream(Items(5), 2, workers, seed=0)
    torch.manual_seed(11)
    before = torch.get_rng_state()
    seen = [ids(stream.next()) for _ in range(4)]                 # crosses an epoch boundary (3 batches each)
    assert torch.equal(torch.get_rng_state(), before)
    resumed = BatchStream(Items(5), 2, workers, seed=0)
    resumed.load_state_dict(stream.state_dict())
    assert [ids(resumed.next()) for _ in range(3)] == [ids(stream.next()) for _ in range(3)]
    assert torch.equal(torch.get_rng_state(), before)
    assert seen[3] == np.random.default_rng([0, 1]).permutation(5).tolist()[:2]
