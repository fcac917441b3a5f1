"""`--allow-activation-change`: every ReLU becomes MaxMin (GroupSort of group 2) before training.

MaxMin over the channel axis pairs channel i with channel i + C/2 and writes
(max(u_i, u_{i+C/2}), min(u_i, u_{i+C/2})) back to those two channels; in the IR it is

    Reshape [C, ...] -> [2, C/2, ...]  ->  Sort(axis 0, descending)  ->  Reshape [C, ...]

(the same nodes speccert.importers.sorting fuses an imported MaxMin into). Sorting is a permutation
that depends on the input, so the map is 1-Lipschitz in L2 like ReLU, and, unlike ReLU, its Jacobian
is a permutation everywhere (gradient-norm preserving: it never discards a direction), which is why
1-Lipschitz networks use it (Anil et al., ICML 2019). The certifier's Sort rule is factor 1, so the
bound of the rewritten net is the product of its linear layers' norms, as with ReLU.

A ReLU whose channel count is odd has no pairing and stays a ReLU (listed in the result). The
rewrite changes the function the net computes: fine-tuning is what makes it accurate again. The ONNX
exporter writes Sort as TopK, which every importer of this project reads back as Sort.

`activation="householder"` puts a HouseHolder activation (Singla, Singla & Feizi, ICLR 2022; the IR's
`Householder`) in the ReLU's place instead: pair i of channels (u_i, u_{i+C/2}) = z goes to
z - 2 max(0, v_i.z) v_i with the unit vector v_i = (sin(theta_i/2), -cos(theta_i/2)) and a *learned*
angle theta_i per pair, also 1-Lipschitz and gradient-norm preserving. MaxMin is the member
theta = 5 pi/2 (v = (-1, 1)/sqrt(2): a pair is kept where u_i >= u_{i+C/2}, else swapped by the
reflection [[cos theta, sin theta], [sin theta, -cos theta]] = [[0, 1], [1, 0]]), so the run starts from
exactly the MaxMin network (up to the float rounding of sin/cos) and training may turn each angle. The
ONNX exporter writes it as deel-torchlip's pattern with theta stored, which the importers fuse back.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from speccert.errors import UsageError
from speccert.ir.graph import Graph, Node
from speccert.ir.ops import Activation, Householder, Reshape, Sort

ACTIVATIONS = ("maxmin", "householder")
MAXMIN_ANGLE = 2.5 * math.pi  # the Householder angle whose map is MaxMin (module docstring)


@dataclass(frozen=True)
class ActivationChange:
    """The rewritten graph, the ReLU nodes replaced, and those kept (odd channel count)."""

    graph: Graph
    replaced: tuple[str, ...]
    kept: tuple[str, ...]
    activation: str = "maxmin"

    def note(self) -> str:
        """One line for the run's notes."""
        what = {"maxmin": "MaxMin", "householder": "HouseHolder (learned angles, MaxMin at start)"}
        text = f"--allow-activation-change: {len(self.replaced)} ReLU replaced by {what[self.activation]}"
        text += " over channels"
        if self.kept:
            text += f"; kept as ReLU (odd channel count): {', '.join(self.kept)}"
        return text


def _fresh(names: set[str], base: str) -> str:
    name, k = base, 1
    while name in names:
        k += 1
        name = f"{base}_{k}"
    names.add(name)
    return name


def _maxmin(node: Node, shape: tuple[int, ...], names: set[str], dtype: torch.dtype) -> list[Node]:
    pairs = (2, shape[0] // 2, *shape[1:])
    r1 = Node(_fresh(names, f"{node.name}/pairs"), Reshape(pairs), node.inputs)
    s = Node(_fresh(names, f"{node.name}/maxmin"), Sort(axis=0, descending=True), (r1.name,))
    return [r1, s, Node(node.name, Reshape(tuple(shape)), (s.name,))]


def _householder(node: Node, shape: tuple[int, ...], names: set[str], dtype: torch.dtype) -> list[Node]:
    theta = torch.full((shape[0] // 2,), MAXMIN_ANGLE, dtype=dtype)
    return [Node(node.name, Householder(theta), node.inputs)]


_MAKERS: dict[str, Callable[[Node, tuple[int, ...], set[str], torch.dtype], list[Node]]] = {
    "maxmin": _maxmin,
    "householder": _householder,
}


def relu_to_maxmin(graph: Graph, activation: str = "maxmin") -> ActivationChange:
    """Replace every ReLU node of `graph` by MaxMin (or, with activation="householder", a HouseHolder
    activation that starts as MaxMin) on its channel axis (non-batch axis 0) when that axis has an even
    length; the last node keeps the ReLU's name, so its readers are unchanged."""
    if activation not in _MAKERS:
        raise UsageError(f"activation {activation!r}: choose one of {', '.join(ACTIVATIONS)}")
    names = {n.name for n in graph.nodes}
    nodes: list[Node] = []
    replaced: list[str] = []
    kept: list[str] = []
    for node in graph.nodes:
        if not (isinstance(node.op, Activation) and node.op.fn == "relu"):
            nodes.append(node)
            continue
        shape = graph.shape_of(node.inputs[0])
        if not shape or shape[0] % 2:
            kept.append(node.name)
            nodes.append(node)
            continue
        nodes += _MAKERS[activation](node, tuple(shape), names, graph.dtype)
        replaced.append(node.name)
    if not replaced:
        return ActivationChange(graph, (), tuple(kept), activation)
    return ActivationChange(graph.replace_nodes(nodes), tuple(replaced), tuple(kept), activation)


__all__ = ["ACTIVATIONS", "MAXMIN_ANGLE", "ActivationChange", "relu_to_maxmin"]
