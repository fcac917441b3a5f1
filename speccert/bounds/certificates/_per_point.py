"""Shared by the per-point kinds (local, crown): run a radius search on the CPU in chunks of points
and spread each point's radius over its classes (every class gets the point's radius, the label inf)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from speccert.bounds.certificate import Batch

Tensor = torch.Tensor
Search = Callable[[Tensor, Tensor, Tensor], Tensor]  # (x, y, margins) of a chunk -> radius per point
START_CAP = 10.0  # a search's largest tested radius is at most this times 1 + ||x||


def search_cap(x: Tensor) -> Tensor:
    """[B]: the largest radius a per-point search tests, 10 (1 + ||x||). A margin constant to first order
    (every unit dead at x: the first-order value m / ||grad m|| is ~ m / 1e-300 or inf) would otherwise
    send the search far beyond any meaningful ball; every tested radius is still checked on its own,
    so the cap only decides where to look."""
    cap: Tensor = START_CAP * (1.0 + x.flatten(1).norm(dim=1))
    return cap


def per_point_radii(batch: Batch, search: Search, chunk: int) -> Tensor:
    """[B, C] radii from `search` run on float64 CPU copies of the batch, `chunk` points at a time."""
    x = batch.x.detach().to("cpu", torch.float64)
    y, m = batch.y.cpu(), batch.margins.cpu()
    r = torch.cat(
        [search(x[i : i + chunk], y[i : i + chunk], m[i : i + chunk]) for i in range(0, x.shape[0], chunk)]
    )
    out = r[:, None].expand_as(m).clone().scatter(1, y[:, None], math.inf)
    return out.to(batch.margins.device)
