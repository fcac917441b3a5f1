"""Tiny graphs and separable data for tests, docs and quick experiments (seeded, CPU-sized)."""

from __future__ import annotations

import torch

from speccert.ir.graph import Graph, Node
from speccert.ir.ops import Activation, Add, Affine, BatchNorm, Conv, Linear, Reshape

Tensor = torch.Tensor


def toy_cnn(act: str = "relu", dtype: torch.dtype = torch.float64, seed: int = 0, bn: bool = True) -> Graph:
    """Affine(normalise) -> Conv 1->4 k3 s2 p1 [-> BN] -> act -> Conv 4->4 k3 p1 -> act -> flatten ->
    Linear 64->8 -> act -> Linear 8->3, on [1, 8, 8] inputs."""
    g = torch.Generator().manual_seed(seed)

    def t(*s: int, scale: float = 0.5) -> Tensor:
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype)

    nodes = [
        Node(
            "norm",
            Affine(
                torch.tensor(2.0, dtype=dtype).reshape(1, 1, 1),
                torch.tensor(-1.0, dtype=dtype).reshape(1, 1, 1),
            ),
            ("input",),
        )
    ]
    nodes.append(Node("c1", Conv(t(4, 1, 3, 3), t(4), (2, 2), ((1, 1), (1, 1)), (1, 1)), ("norm",)))
    last = "c1"
    if bn:
        nodes.append(
            Node(
                "bn1",
                BatchNorm(
                    t(4, scale=0.1),
                    (torch.rand(4, generator=g, dtype=torch.float64) + 0.5).to(dtype),
                    (1 + t(4, scale=0.1)),
                    t(4, scale=0.1),
                ),
                ("c1",),
            )
        )
        last = "bn1"
    nodes += [
        Node("a1", Activation(act), (last,)),
        Node("c2", Conv(t(4, 4, 3, 3, scale=0.3), t(4), (1, 1), ((1, 1), (1, 1)), (1, 1)), ("a1",)),
        Node("a2", Activation(act), ("c2",)),
        Node("flat", Reshape((64,)), ("a2",)),
        Node("l1", Linear(t(8, 64, scale=0.2), t(8)), ("flat",)),
        Node("a3", Activation(act), ("l1",)),
        Node("l2", Linear(t(3, 8), t(3)), ("a3",)),
    ]
    return Graph((1, 8, 8), nodes, dtype=dtype)


def toy_resnet(dtype: torch.dtype = torch.float64, seed: int = 0) -> Graph:
    """Conv stem, one identity-shortcut block (conv-relu-conv + x), relu, flatten, Linear to 3 classes."""
    g = torch.Generator().manual_seed(seed)

    def t(*s: int, scale: float = 0.4) -> Tensor:
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype)

    p1 = ((1, 1), (1, 1))
    nodes = [
        Node("stem", Conv(t(3, 1, 3, 3), t(3), (1, 1), p1, (1, 1)), ("input",)),
        Node("a0", Activation("relu"), ("stem",)),
        Node("b1", Conv(t(3, 3, 3, 3), None, (1, 1), p1, (1, 1)), ("a0",)),
        Node("a1", Activation("relu"), ("b1",)),
        Node("b2", Conv(t(3, 3, 3, 3), None, (1, 1), p1, (1, 1)), ("a1",)),
        Node("add", Add(), ("b2", "a0")),
        Node("a2", Activation("relu"), ("add",)),
        Node("flat", Reshape((48,)), ("a2",)),
        Node("fc", Linear(t(3, 48, scale=0.2), t(3)), ("flat",)),
    ]
    return Graph((1, 4, 4), nodes, dtype=dtype)


def toy_mlp(
    act: str = "relu",
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    d_in: int = 6,
    hidden: int = 16,
    classes: int = 3,
) -> Graph:
    """Linear d_in->hidden -> act -> Linear hidden->classes."""
    g = torch.Generator().manual_seed(seed)

    def t(*s: int, scale: float = 0.5) -> Tensor:
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype)

    nodes = [
        Node("l1", Linear(t(hidden, d_in), t(hidden)), ("input",)),
        Node("a1", Activation(act), ("l1",)),
        Node("l2", Linear(t(classes, hidden), t(classes)), ("a1",)),
    ]
    return Graph((d_in,), nodes, dtype=dtype)


def separable_data(
    n: int,
    shape: tuple[int, ...],
    classes: int = 3,
    seed: int = 0,
    spread: float = 0.15,
    dtype: torch.dtype = torch.float32,
    centre_seed: int = 1234,
) -> tuple[Tensor, Tensor]:
    """n points in [0, 1]^shape around `classes` random centres (fixed by centre_seed): (x, y).
    Different `seed`s give independent samples of the same distribution (train / validation)."""
    centres = torch.rand(
        classes, *shape, generator=torch.Generator().manual_seed(centre_seed), dtype=torch.float64
    )
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = centres[y] + spread * torch.randn(n, *shape, generator=g, dtype=torch.float64)
    return x.clamp(0, 1).to(dtype), y.to(torch.int64)
