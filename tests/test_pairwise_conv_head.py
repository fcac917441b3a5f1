"""Pairwise certificate for conv classifier heads (issue 15): a net whose last layer is a Conv with a
1x1 output, flattened to the logits, gets the pairwise radii of the equivalent Linear-head net, whose
weight is built here by hand from the kernel (taps over zero padding dropped)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speccert.bounds import certify
from speccert.ir import INPUT, Activation, Conv, Graph, Linear, Node, Reshape

D = torch.float64


def _body(gen: torch.Generator) -> list[Node]:
    w = torch.randn(4, 2, 3, 3, generator=gen, dtype=D) / 3
    b = torch.randn(4, generator=gen, dtype=D) * 0.1
    return [
        Node("conv", Conv(w, b, (1, 1), ((1, 1), (1, 1)), (1, 1)), (INPUT,)),
        Node("relu", Activation("relu"), ("conv",)),
    ]


@pytest.mark.parametrize("padded", [False, True])
def test_conv_head_gets_the_pairwise_radii_of_the_equivalent_linear_head(padded: bool) -> None:
    gen = torch.Generator().manual_seed(5 + padded)
    n, classes = (2 if padded else 4), 5
    body = _body(gen)
    kernel = torch.randn(classes, 4, 3 if padded else 4, 3 if padded else 4, generator=gen, dtype=D)
    bias = torch.randn(classes, generator=gen, dtype=D)
    if padded:  # 3x3 kernel, padding 1, stride 2 on 2x2: one output, taps 1..2 land on the pixels
        head = Conv(kernel, bias, (2, 2), ((1, 1), (1, 1)), (1, 1))
        w_lin = kernel[:, :, 1:3, 1:3].reshape(classes, -1)
    else:
        head = Conv(kernel, bias, (1, 1), ((0, 0), (0, 0)), (1, 1))
        w_lin = kernel.reshape(classes, -1)
    conv_net = Graph(
        (2, n, n),
        [*body, Node("head", head, ("relu",)), Node("flat", Reshape((classes,)), ("head",))],
        dtype=D,
    )
    lin_net = Graph(
        (2, n, n),
        [*body, Node("flat", Reshape((4 * n * n,)), ("relu",)), Node("head", Linear(w_lin, bias), ("flat",))],
        dtype=D,
    )
    x = torch.randn(60, 2, n, n, generator=gen, dtype=D)
    with torch.no_grad():
        assert torch.allclose(conv_net.forward(x), lin_net.forward(x), atol=1e-12)
        y = conv_net.forward(x).argmax(1)
    kw = {"eps": [0.05], "lower_bound": False, "method": "exact"}
    rep_conv = certify(conv_net, (x, y), audit=20, **kw)
    rep_lin = certify(lin_net, (x, y), **kw)
    assert "pairwise" in rep_conv.radii
    # equal up to the float64 rounding allowance of the two forward passes (margins differ by ~1e-16)
    np.testing.assert_allclose(rep_conv.radii["pairwise"], rep_lin.radii["pairwise"], rtol=1e-7)
    assert np.all(rep_conv.radii["pairwise"] >= rep_conv.radii["global"] * (1 - 1e-9))
    assert np.median(rep_conv.radii["pairwise"] / rep_conv.radii["global"]) > 1.0
