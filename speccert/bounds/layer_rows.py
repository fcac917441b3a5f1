"""The rows of a certify report's per-layer table: each linear layer's norm bracket and, between them,
each node whose composition rule multiplies by a fixed factor of the operator (a Sort's 1, an L2 pool's
window count), so that the table shows every factor of the bound that is not an activation's slope."""

from __future__ import annotations

from speccert.bounds.certify_result import LayerRow
from speccert.bounds.compose import graph_rule
from speccert.bounds.lipschitz import LipschitzBound
from speccert.ir import Center, Householder, L2Pool, Sort

# Nonlinear ops whose rule factor is a fixed property of the operator (not an activation's slope),
# shown as table rows so that a reader sees what they contribute (1 for a Sort: nothing).
RULE_ROWS = (Sort, Householder, Center, L2Pool)


def layer_rows(bound: LipschitzBound) -> list[LayerRow]:
    """The linear layers' norm bounds and, in graph order between them, a row per RULE_ROWS node with
    its composition factor (method "rule": lower = upper = the factor the bound multiplies by)."""
    linear = {
        n.name: LayerRow(
            n.name,
            n.op,
            tuple(n.in_shape),
            tuple(n.out_shape),
            n.upper.value,
            n.lower.value if n.lower is not None else None,
            n.upper.method,
            n.seconds,
        )
        for n in bound.layers
    }
    rows: list[LayerRow] = []
    graph = bound.folded
    for node in graph.nodes:
        if node.name in linear:
            rows.append(linear.pop(node.name))
        elif isinstance(node.op, RULE_ROWS):
            factor = graph_rule(graph, node).slope
            shape = tuple(graph.shape_of(node.inputs[0]))
            rows.append(
                LayerRow(node.name, node.op.describe(), shape, tuple(node.shape), factor, factor, "rule")
            )
    return rows + list(linear.values())
