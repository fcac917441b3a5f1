"""CROWN certificate, fast paths: the hidden bounds' unit rows read from per-model columns e_i^T A
(instead of a reverse pass per row) give the very same bounds; chunks of rows that run only over the
points with rows left (instead of padding every point to the largest count) give the same bounds up to
the order of float64 sums inside batched kernels (the error allowances hold for any order), and those
bounds hold at sampled points of the ball."""

from __future__ import annotations

import pytest
import torch
from certify_nets import D
from test_bounds_crown import sample_ball
from test_bounds_crown_textbook import conv_chain
from test_bounds_local import residual_net

import speccert.bounds.crown as crown_module
import speccert.bounds.crown_hidden as hidden_module
from speccert.bounds.crown import Crown
from speccert.bounds.lipschitz import lipschitz_bound
from speccert.ir import Graph

NETS = {
    "conv_chain": lambda: (conv_chain(3), (2, 8, 8)),
    "residual": lambda: (residual_net(4, 2, 6, "relu", 3, True), (1, 6, 6)),
}


def _intervals(g: Graph, x: torch.Tensor, r: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return Crown(lipschitz_bound(g)).ball(x, r).bb.z


@pytest.mark.parametrize("name", sorted(NETS))
def test_fast_paths_give_the_same_hidden_bounds(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    g, shape = NETS[name]()
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(1), dtype=D)
    r = torch.tensor([0.02, 0.3, 0.05, 0.6, 0.1], dtype=D)  # very different unit counts per point
    monkeypatch.setattr(hidden_module, "ROW_CHUNK", 4)  # many chunks: points drop out between them
    fast = _intervals(g, x, r)
    assert sum(int((lo < hi).sum()) for lo, hi in fast[1:]) > 40
    crown = Crown(lipschitz_bound(g))
    for p in sample_ball(x, r, 64, 2):
        acts = crown.graph.activations(p)
        for st_, (lo, hi) in zip(crown.stages, fast, strict=False):
            z = acts[st_.z_name]
            assert bool((z >= lo - 1e-9).all() and (z <= hi + 1e-9).all()), "an interval fails in the ball"
    # every chunk over every point (padding rows for the points with fewer units)
    monkeypatch.setattr(hidden_module, "SELECT", False)
    padded = _intervals(g, x, r)
    for (lo, hi), (plo, phi) in zip(fast, padded, strict=True):
        scale = 1.0 + float(torch.maximum(lo.abs(), hi.abs()).max())
        torch.testing.assert_close(lo, plo, rtol=0, atol=1e-13 * scale)
        torch.testing.assert_close(hi, phi, rtol=0, atol=1e-13 * scale)
    # no columns: every unit row through the stage's reverse pass (a one-hot row's products are exact)
    monkeypatch.setattr(crown_module, "COLUMN_BYTES", 0)
    slow = _intervals(g, x, r)
    for (plo, phi), (slo, shi) in zip(padded, slow, strict=True):
        assert torch.equal(plo, slo) and torch.equal(phi, shi)
