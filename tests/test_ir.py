"""The IR: shape inference, sharing with to_torch(), and exactness of the folding pass."""

from __future__ import annotations

import pytest
import torch

from speccert.errors import InputError, UsageError
from speccert.ir import (
    Activation,
    Add,
    Affine,
    BatchNorm,
    Conv,
    Graph,
    Linear,
    Node,
    Reshape,
    fold_linear,
)


def _bn(c: int, dtype: torch.dtype) -> BatchNorm:
    return BatchNorm(
        torch.rand(c, dtype=dtype),
        torch.rand(c, dtype=dtype) + 0.5,
        torch.randn(c, dtype=dtype),
        torch.randn(c, dtype=dtype),
    )


def _graph(dtype: torch.dtype = torch.float64) -> Graph:
    t = lambda *s: torch.randn(*s, dtype=dtype)  # noqa: E731
    nodes = [
        Node(
            "norm",
            Affine(torch.tensor([2.0, 3.0, 4.0], dtype=dtype).reshape(3, 1, 1), t(3, 1, 1)),
            ("input",),
        ),
        Node("c1", Conv(t(8, 3, 3, 3), t(8), (2, 2), ((1, 1), (1, 1)), (1, 1)), ("norm",)),
        Node("bn", _bn(8, dtype), ("c1",)),
        Node("r", Activation("relu"), ("bn",)),
        Node("c2", Conv(t(8, 4, 3, 3), None, (1, 1), ((1, 1), (0, 2)), (1, 1), groups=2), ("r",)),
        Node("add", Add(), ("c2", "r")),
        Node("f", Reshape((-1,)), ("add",)),
        Node("l1", Linear(t(20, 128), t(20)), ("f",)),
        Node("l2", Linear(t(10, 20), t(10)), ("l1",)),
    ]
    return Graph((3, 8, 8), nodes, dtype=dtype)


def test_shapes_are_inferred() -> None:
    g = _graph()
    assert g.node("c1").shape == (8, 4, 4)
    assert g.node("f").shape == (128,)
    assert g.output_shape == (10,)


def test_fold_linear_is_exact_and_removes_batchnorm() -> None:
    g = _graph()
    h = fold_linear(g)
    x = torch.randn(7, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(h(x), g(x), rtol=1e-12, atol=1e-10)
    types = [n.op_type for n in h.nodes]
    assert "BatchNorm" not in types
    assert types.count("Linear") == 1  # l1 and l2 multiplied together
    assert bool((h.node("norm").op.scale == 1).all())  # type: ignore[attr-defined]


def test_to_torch_shares_parameters() -> None:
    g = _graph(torch.float32)
    m = g.to_torch()
    x = torch.randn(2, 3, 8, 8)
    before = g(x).detach().clone()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m(x).square().sum().backward()
    opt.step()
    assert not torch.allclose(g(x), before)


def test_wrong_input_shape_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="does not match"):
        _graph()(torch.randn(1, 3, 9, 9, dtype=torch.float64))


def test_nan_weights_are_named() -> None:
    g = _graph()
    g.node("c1").op.weight[0, 0, 0, 0] = float("nan")  # type: ignore[attr-defined]
    with pytest.raises(InputError, match="c1.weight"):
        g.check_finite()


def test_conv_transpose_describes_itself_like_a_conv() -> None:
    """Reports name a transposed conv's channels, kernel, stride and groups (not just its type)."""
    from speccert.ir import ConvTranspose

    plain = ConvTranspose(torch.zeros(3, 2, 4, 4), None, (2, 2), (1, 1), (0, 0), (1, 1), 1)
    grouped = ConvTranspose(torch.zeros(4, 2, 3, 3), None, (1, 1), (0, 0), (0, 0), (2, 2), 2)
    assert plain.describe() == "ConvTranspose 3->2 4x4 s2,2"
    assert grouped.describe() == "ConvTranspose 4->4 3x3 g2 d2,2"
    # an upsampling's constant says so (inspect and norms name it as the user's layer is not named)
    fixed = ConvTranspose(torch.ones(2, 1, 2, 2), None, (2, 2), (0, 0), (0, 0), (1, 1), 2, fixed=True)
    assert fixed.describe() == "ConvTranspose 2->2 2x2 s2,2 g2 fixed"
    from speccert.ir import Linear

    assert Linear(torch.ones(8, 4), None, fixed=True).describe() == "Linear 4->8 fixed"
