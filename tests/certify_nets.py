"""Small random networks as IR graphs (float64), shared by the bounds/certify tests."""

from __future__ import annotations

import numpy as np
import torch

from speccert.ir import (
    INPUT,
    Activation,
    Add,
    AvgPool,
    BatchNorm,
    Concat,
    Conv,
    Graph,
    Linear,
    MaxPool,
    Node,
    Pad,
    Reshape,
    Transpose,
)

D = torch.float64


def _w(*shape: int, scale: float = 1.0) -> torch.Tensor:
    fan_in = 1
    for s in shape[1:]:
        fan_in *= s
    return torch.randn(*shape, dtype=D) * scale / fan_in**0.5


def _conv(
    cin: int,
    cout: int,
    k: int,
    stride: int = 1,
    pad: tuple[tuple[int, int], ...] = ((1, 1), (1, 1)),
    dilation: int = 1,
    groups: int = 1,
) -> Conv:
    return Conv(
        _w(cout, cin // groups, k, k, scale=1.5),
        torch.randn(cout, dtype=D) * 0.1,
        (stride, stride),
        pad,
        (dilation, dilation),
        groups,
    )


def _bn(c: int) -> BatchNorm:
    return BatchNorm(
        torch.randn(c, dtype=D) * 0.1,
        torch.rand(c, dtype=D) + 0.5,
        torch.rand(c, dtype=D) + 0.5,
        torch.randn(c, dtype=D) * 0.1,
    )


def mlp(act: str = "relu", d: int = 12, h: int = 16, c: int = 5) -> Graph:
    return Graph(
        (d,),
        [
            Node("l1", Linear(_w(h, d, scale=2.0), torch.randn(h, dtype=D) * 0.1), (INPUT,)),
            Node("a1", Activation(act), ("l1",)),
            Node("l2", Linear(_w(h, h, scale=2.0), torch.randn(h, dtype=D) * 0.1), ("a1",)),
            Node("a2", Activation(act), ("l2",)),
            Node("l3", Linear(_w(c, h, scale=2.0), torch.randn(c, dtype=D)), ("a2",)),
        ],
        dtype=D,
    )


def mlp_elu() -> Graph:
    g = mlp("relu")
    nodes = [
        Node(n.name, Activation("elu", 1.0), n.inputs) if n.op_type == "Activation" else n for n in g.nodes
    ]
    return Graph(g.input_shape, nodes, dtype=D)


def cnn() -> Graph:
    """Conv with stride 2 + padding, BatchNorm, leaky relu, asymmetric padding, max-pool, flatten."""
    return Graph(
        (2, 9, 9),
        [
            Node("c1", _conv(2, 4, 3, stride=2), (INPUT,)),
            Node("bn1", _bn(4), ("c1",)),
            Node("a1", Activation("relu"), ("bn1",)),
            Node("c2", _conv(4, 6, 3, pad=((1, 0), (0, 1))), ("a1",)),
            Node("a2", Activation("leaky_relu", 0.1), ("c2",)),
            Node("mp", MaxPool((2, 2), (1, 1), ((0, 0), (0, 0)), (1, 1)), ("a2",)),
            Node("fl", Reshape((6 * 3 * 3,)), ("mp",)),
            Node("fc", Linear(_w(4, 54, scale=2.0), torch.randn(4, dtype=D)), ("fl",)),
        ],
        dtype=D,
    )


def residual(act: str = "relu") -> Graph:
    """x -> conv -> act -> conv (+ conv shortcut) -> act -> avgpool -> pad -> flatten -> linear."""
    return Graph(
        (3, 6, 6),
        [
            Node("c1", _conv(3, 4, 3), (INPUT,)),
            Node("a1", Activation(act), ("c1",)),
            Node("c2", _conv(4, 4, 3), ("a1",)),
            Node("sc", _conv(3, 4, 1, pad=((0, 0), (0, 0))), (INPUT,)),
            Node("add", Add(), ("c2", "sc")),
            Node("a2", Activation(act), ("add",)),
            Node("ap", AvgPool((2, 2), (2, 2), ((0, 0), (0, 0))), ("a2",)),
            Node("pad", Pad(((0, 0), (1, 0), (0, 1))), ("ap",)),
            Node("fl", Reshape((4 * 4 * 4,)), ("pad",)),
            Node("fc", Linear(_w(6, 64, scale=2.0), torch.randn(6, dtype=D)), ("fl",)),
        ],
        dtype=D,
    )


def concat(act_a: str = "sigmoid", act_b: str = "gelu") -> Graph:
    """Two branches concatenated, a transpose, and a final linear."""
    return Graph(
        (2, 5),
        [
            Node("fl", Reshape((10,)), (INPUT,)),
            Node("la", Linear(_w(8, 10, scale=3.0), torch.randn(8, dtype=D)), ("fl",)),
            Node("aa", Activation(act_a), ("la",)),
            Node("lb", Linear(_w(6, 10, scale=2.0), torch.randn(6, dtype=D)), ("fl",)),
            Node("ab", Activation(act_b), ("lb",)),
            Node("cat", Concat(0), ("aa", "ab")),
            Node("rs", Reshape((2, 7)), ("cat",)),
            Node("tr", Transpose((1, 0)), ("rs",)),
            Node("fl2", Reshape((14,)), ("tr",)),
            Node("fc", Linear(_w(4, 14, scale=2.0), torch.randn(4, dtype=D)), ("fl2",)),
        ],
        dtype=D,
    )


def smooth_cnn(act: str = "softplus") -> Graph:
    return Graph(
        (1, 6, 6),
        [
            Node("c1", _conv(1, 3, 3, stride=2), (INPUT,)),
            Node("a1", Activation(act), ("c1",)),
            Node("fl", Reshape((27,)), ("a1",)),
            Node("l1", Linear(_w(10, 27, scale=2.0), torch.randn(10, dtype=D) * 0.1), ("fl",)),
            Node("a2", Activation(act), ("l1",)),
            Node("fc", Linear(_w(4, 10, scale=2.0), torch.randn(4, dtype=D)), ("a2",)),
        ],
        dtype=D,
    )


def dead_relu_net() -> tuple[Graph, torch.Tensor, np.ndarray]:
    """(graph, x, d): a 6 -> 12 -> 3 ReLU MLP whose hidden biases (-5) keep every unit dead at the 8
    points x, so its logits are the output bias on the ball of radius d[i] = min_k (-z_k) / ||w_k||
    around x[i]: a margin constant to first order (L(0) = 0, m / L(0) infinite)."""
    gen = torch.Generator().manual_seed(3)
    w1 = torch.randn(12, 6, generator=gen, dtype=D)
    nodes = [
        Node("l1", Linear(w1, torch.full((12,), -5.0, dtype=D)), (INPUT,)),
        Node("a1", Activation("relu"), ("l1",)),
        Node(
            "out",
            Linear(torch.randn(3, 12, generator=gen, dtype=D), torch.tensor([1.0, 0.0, -1.0], dtype=D)),
            ("a1",),
        ),
    ]
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(4), dtype=D) * 0.3
    z = x @ w1.T - 5.0
    assert bool((z < 0).all())
    return Graph((6,), nodes, dtype=D), x, ((-z) / w1.norm(dim=1)).amin(1).numpy()


def all_nets() -> dict[str, Graph]:
    torch.manual_seed(1)
    return {
        "mlp_relu": mlp("relu"),
        "mlp_tanh": mlp("tanh"),
        "mlp_elu": mlp_elu(),
        "cnn": cnn(),
        "residual": residual(),
        "residual_silu": residual("silu"),
        "concat": concat(),
        "smooth_cnn": smooth_cnn(),
    }
