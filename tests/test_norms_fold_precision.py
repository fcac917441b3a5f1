"""Per-layer norms of a float32 file whose BatchNorm / normalisation is folded into a layer.

`speccert norms` and `layer_norms(graph)` bound the folded operator W * diag(gamma / sqrt(var + eps)).
Folded in float32, that product is rounded and its norm can be ~5e-8 relative below the file's (exact)
operator: a per-layer "upper bound" below the truth (or a "proven" lower bound above it). Ground truth
here is independent of speccert: the torch module in float64 (float32 parameters are exact in float64),
Jacobian by autograd, dense SVD. Before the fold ran in float64, every seed below failed one of the two.
(`lipschitz_bound` always folded in float64: certificates were not affected.)
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

import speccert
from speccert.norms import layer_norms

REL = 1e-12  # the float64 SVD's own error is ~1e-15 relative


def _model(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(72, 3)
    ).eval()
    bn = m[1]
    assert isinstance(bn, nn.BatchNorm2d) and bn.running_var is not None and bn.running_mean is not None
    with torch.no_grad():
        bn.running_var.uniform_(0.05, 2.0)
        bn.running_mean.normal_(0, 0.5)
        bn.weight.normal_(1, 0.5)
    return m


def _truth(m: nn.Sequential) -> float:
    """||conv then BatchNorm||_2 of the float64 copy (its linear part: the Jacobian at any point)."""
    m64 = nn.Sequential(m[0], m[1]).double()
    j = torch.autograd.functional.jacobian(
        lambda z: m64(z.reshape(1, 1, 6, 6)).flatten(), torch.zeros(36, dtype=torch.float64)
    )
    return float(torch.linalg.matrix_norm(j, ord=2))


@pytest.mark.parametrize("seed", range(0, 40, 4))
def test_folded_batchnorm_bracket_holds_for_the_file(tmp_path: Path, seed: int) -> None:
    m = _model(seed)
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(  # no constant folding: the exporter would fuse BatchNorm into the conv in float32
            m, (torch.rand(1, 1, 6, 6),), str(path), dynamo=False, opset_version=17, do_constant_folding=False
        )
    assert "BatchNormalization" in {n.op_type for n in onnx.load(str(path)).graph.node}
    g = speccert.load(str(path))
    assert g.dtype == torch.float32  # the file's precision: the fold must not inherit it
    conv = [n for n in layer_norms(g) if n.op.startswith("Conv")]
    assert len(conv) == 1  # BatchNorm folded into the conv
    truth = _truth(m)
    assert conv[0].upper.value >= truth * (1 - REL)
    assert conv[0].lower is not None and conv[0].lower.value <= truth * (1 + REL)
    # the composed bound (lipschitz_bound folds in float64) agrees with the per-layer one
    lb = speccert.lipschitz_bound(g)
    assert lb.node_upper[conv[0].name] >= truth * (1 - REL)
