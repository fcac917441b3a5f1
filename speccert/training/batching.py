"""Which training examples each rank sees, in which order, at each step of a fine-tuning run.

The order of epoch e is DistributedSampler's shuffle seeded by (seed, e): a function of the seed and
the epoch only, so a resumed run skips exactly the batches it already trained and every rank of a
torchrun job gets a disjoint slice of the same permutation (the last batch may be short). Inputs are
normalised once, up front, exactly as the certifier applies --mean / --std:

    x' = (x - mean_c) / std_c     per channel c (or one scalar for every channel)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DistributedSampler

from speccert.training import ddp

Tensor = torch.Tensor


class _Indices(torch.utils.data.Dataset[int]):
    """A stand-in dataset of n indices for DistributedSampler (which only needs len)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def normalised(x: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> Tensor:
    """(x - mean) / std per channel (axis 1), or with one scalar each; `x` itself when both are None."""
    if mean is None and std is None:
        return x
    mu = torch.tensor(list(mean or [0.0]), dtype=x.dtype, device=x.device)
    sd = torch.tensor(list(std or [1.0]), dtype=x.dtype, device=x.device)
    shape = (1, -1) + (1,) * (x.dim() - 2) if mu.numel() > 1 else (1,)
    return (x - mu.reshape(shape)) / sd.reshape(shape)


def epoch_batches(n: int, per_rank: int, seed: int, epoch: int, info: ddp.DistInfo) -> list[list[int]]:
    """This rank's batches (lists of example indices, `per_rank` each) of `epoch` over `n` examples."""
    sampler: DistributedSampler[int] = DistributedSampler(
        _Indices(n), num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed, drop_last=False
    )
    sampler.set_epoch(epoch)
    order = list(sampler)
    return [order[i : i + per_rank] for i in range(0, len(order), per_rank)]


__all__ = ["epoch_batches", "normalised"]
