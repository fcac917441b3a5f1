"""Shared by the per-point kinds (local, crown): run a radius search on the CPU in chunks of points
and spread each point's radius over its classes (every class gets the point's radius, the label inf)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from speccert.bounds.certificate import Batch

Tensor = torch.Tensor
Search = Callable[[Tensor, Tensor, Tensor], Tensor]  # (x, y, margins) of a chunk -> radius per point


def per_point_radii(batch: Batch, search: Search, chunk: int) -> Tensor:
    """[B, C] radii from `search` run on float64 CPU copies of the batch, `chunk` points at a time."""
    x = batch.x.detach().to("cpu", torch.float64)
    y, m = batch.y.cpu(), batch.margins.cpu()
    r = torch.cat(
        [search(x[i : i + chunk], y[i : i + chunk], m[i : i + chunk]) for i in range(0, x.shape[0], chunk)]
    )
    out = r[:, None].expand_as(m).clone().scatter(1, y[:, None], math.inf)
    return out.to(batch.margins.device)
