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
"""

from __future__ import annotations

from dataclasses import dataclass

from speccert.ir.graph import Graph, Node
from speccert.ir.ops import Activation, Reshape, Sort


@dataclass(frozen=True)
class ActivationChange:
    """The rewritten graph, the ReLU nodes replaced, and those kept (odd channel count)."""

    graph: Graph
    replaced: tuple[str, ...]
    kept: tuple[str, ...]

    def note(self) -> str:
        """One line for the run's notes."""
        text = f"--allow-activation-change: {len(self.replaced)} ReLU replaced by MaxMin over channels"
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


def relu_to_maxmin(graph: Graph) -> ActivationChange:
    """Replace every ReLU node of `graph` by MaxMin on its channel axis (non-batch axis 0) when that
    axis has an even length; the last node keeps the ReLU's name, so its readers are unchanged."""
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
        pairs = (2, shape[0] // 2, *shape[1:])
        r1 = Node(_fresh(names, f"{node.name}/pairs"), Reshape(pairs), node.inputs)
        s = Node(_fresh(names, f"{node.name}/maxmin"), Sort(axis=0, descending=True), (r1.name,))
        nodes += [r1, s, Node(node.name, Reshape(tuple(shape)), (s.name,))]
        replaced.append(node.name)
    if not replaced:
        return ActivationChange(graph, (), tuple(kept))
    return ActivationChange(graph.replace_nodes(nodes), tuple(replaced), tuple(kept))


__all__ = ["ActivationChange", "relu_to_maxmin"]
