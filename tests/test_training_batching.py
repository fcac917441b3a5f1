"""speccert.training.batching: the per-epoch order is a seeded permutation split disjointly across
ranks, and input normalisation is the certifier's (x - mean) / std per channel."""

from __future__ import annotations

import torch

from speccert.training.batching import epoch_batches, normalised
from speccert.training.ddp import DistInfo


def test_batches_cover_every_example_once_and_depend_on_seed_and_epoch() -> None:
    one = DistInfo(rank=0, world_size=1, local_rank=0)
    b = epoch_batches(10, 4, seed=0, epoch=1, info=one)
    assert [len(x) for x in b] == [4, 4, 2]
    assert sorted(i for x in b for i in x) == list(range(10))
    assert epoch_batches(10, 4, seed=0, epoch=1, info=one) == b  # a function of (seed, epoch): resumable
    assert epoch_batches(10, 4, seed=0, epoch=2, info=one) != b
    assert epoch_batches(10, 4, seed=1, epoch=1, info=one) != b


def test_ranks_get_disjoint_slices_of_one_permutation() -> None:
    ranks = [epoch_batches(12, 3, 0, 5, DistInfo(rank=r, world_size=2, local_rank=r)) for r in (0, 1)]
    seen = [i for batches in ranks for x in batches for i in x]
    assert sorted(seen) == list(range(12))


def test_normalised_per_channel_and_scalar() -> None:
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float64).reshape(2, 3, 2, 2)
    mean, std = (1.0, 2.0, 3.0), (0.5, 2.0, 4.0)
    want = torch.stack([(x[:, c] - mean[c]) / std[c] for c in range(3)], dim=1)
    torch.testing.assert_close(normalised(x, mean, std), want, rtol=0, atol=0)
    torch.testing.assert_close(normalised(x, (2.0,), None), x - 2.0, rtol=0, atol=0)
    assert normalised(x, None, None) is x
