"""A max-pool as the network's first nonlinear stage (right after the input, or after an input
normalisation) under the local and crown certificates: found by the soundness fuzzer (seed 146 of
`python -m speccert.devtools.fuzz --local`), where both crashed with an IndexError when the stage had
an affine node before the pool (the per-unit bound asked an earlier stage, which does not exist, for the
batch size). Now they certify, and every radius survives the audit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import speccert
from speccert.importers.torch_import import from_module


class _Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) / 0.25


@pytest.mark.parametrize("normalize", [False, True])
def test_local_and_crown_certify_a_net_that_starts_with_a_max_pool(normalize: bool) -> None:
    torch.manual_seed(0)
    layers: list[nn.Module] = [
        nn.MaxPool2d(2, 1, 1),
        nn.Flatten(),
        nn.Linear(2 * 7 * 7, 8),
        nn.ReLU(),
        nn.Linear(8, 3),
    ]
    if normalize:
        layers.insert(0, _Normalize())
    net = nn.Sequential(*layers).eval()
    g = from_module(net, (2, 6, 6))
    x = torch.rand(12, 2, 6, 6)
    with torch.no_grad():
        y = net(x).argmax(1)
    for kind in ("local", "crown"):
        rep = speccert.certify(g, (x, y), eps=[0.01], certificates=["pairwise", kind], audit=12)
        assert rep.audit is not None and rep.audit.successes == 0
        assert float(rep.radii[kind].max()) > 0  # the kind ran and proved something
