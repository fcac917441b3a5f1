"""Initial rescaling: the logits are multiplied by the factor exactly (so no prediction changes and
the certified Lipschitz bound scales by the same factor), uniformly on homogeneous chains (BatchNorm
included) and on the last layer where residual blocks or smooth activations forbid the uniform form."""

from __future__ import annotations

import pytest
import torch

from speccert.bounds import certify
from speccert.ir.graph import Graph
from speccert.training.maxmin import relu_to_maxmin
from speccert.training.rescale import rescale_logits
from speccert.training.toy import toy_cnn, toy_mlp, toy_resnet


def _inputs(g: Graph) -> torch.Tensor:
    return torch.rand((64, *g.input_shape), generator=torch.Generator().manual_seed(0), dtype=g.dtype)


@pytest.mark.parametrize(
    "make,how",
    [
        (lambda: toy_mlp(), "uniform"),
        (lambda: toy_cnn(bn=True), "uniform"),
        (lambda: relu_to_maxmin(toy_cnn(bn=True)).graph, "uniform"),  # MaxMin is homogeneous too
        (lambda: toy_cnn(act="softplus", bn=False), "last layer"),
        (lambda: toy_resnet(), "last layer"),
    ],
)
@pytest.mark.parametrize("factor", [0.01, 3.0])
def test_logits_scale_exactly_and_the_certified_bound_follows(make, how: str, factor: float) -> None:  # noqa: ANN001
    g = make()
    x = _inputs(g)
    with torch.no_grad():
        before = g(x).clone()
    y = before.argmax(1)
    l_before = certify(g, (x.numpy(), y.numpy()), [0.1], lower_bound=False).lipschitz_upper
    assert rescale_logits(g, factor) == how
    with torch.no_grad():
        after = g(x)
    assert torch.allclose(after, factor * before, rtol=1e-9, atol=1e-12)
    assert torch.equal(after.argmax(1), y)
    l_after = certify(g, (x.numpy(), y.numpy()), [0.1], lower_bound=False).lipschitz_upper
    assert l_after == pytest.approx(factor * l_before, rel=1e-6)


def test_bad_factor_refused() -> None:
    with pytest.raises(ValueError):
        rescale_logits(toy_mlp(), 0.0)
