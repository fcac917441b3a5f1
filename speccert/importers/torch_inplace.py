"""In-place ATen ops read as their functional twins, when nothing else can see the mutation.

An archive saved from `torch.export.export` (training IR) keeps the `relu_`, `add_`, `hardtanh_`,
`silu_`, `dropout_` of modules built with `inplace=True`. torch's own remedy, `run_decompositions({})`,
re-traces the whole program through functionalisation: 10 s for densenet121's 121 `relu_` on 2 cores,
most of an `inspect`. Almost every such mutation is local: `relu_(t)` where `t` is a fresh
intermediate that no node reads after the mutation. Then every later reader reads the in-place node's
result, which is the functional op's result, so retargeting `relu_` to `relu` is an exact rewrite.

`functional_copy(ep)` returns a copy of the program so rewritten, or None as soon as one mutation is
not provably local (an input, parameter or view is written, a reader comes after the mutation): the
caller then functionalises with torch. The original program is never modified, so the faithfulness
check still compares the IR with the program as saved.
"""

from __future__ import annotations

import copy
import operator
from typing import Any

import torch
from torch.fx import Graph, GraphModule, Node

OpOverload = torch._ops.OpOverload


def _returns_alias(node: Node) -> bool:
    """True unless the node's result is a fresh tensor (a view or an in-place result aliases its input)."""
    target = node.target
    if target is operator.getitem:  # one result of a multi-output op (batch norm's tuple)
        parent = node.args[0]
        return not isinstance(parent, Node) or parent.op != "call_function" or _returns_alias(parent)
    if not isinstance(target, OpOverload):
        return True
    return any(r.alias_info is not None for r in target._schema.returns)


def functional_twin(target: Any) -> OpOverload | None:
    """`aten.relu.default` for `aten.relu_.default`: same overload, same argument types, writing only
    its first argument; None when there is no such twin."""
    if not isinstance(target, OpOverload):
        return None
    schema = target._schema
    ns, _, base = schema.name.partition("::")
    if not base.endswith("_") or base.endswith("__"):
        return None
    written = [
        i for i, a in enumerate(schema.arguments) if a.alias_info is not None and a.alias_info.is_write
    ]
    if written != [0] or len(schema.returns) != 1:
        return None
    packet = getattr(getattr(torch.ops, ns), base[:-1], None)
    twin = getattr(packet, target._overloadname, None) if packet is not None else None
    if not isinstance(twin, OpOverload) or twin._schema.is_mutable:
        return None
    types = [str(a.type) for a in twin._schema.arguments]
    if types != [str(a.type) for a in schema.arguments] or len(twin._schema.returns) != 1:
        return None
    return twin


def _local_mutations(graph: Graph) -> dict[str, OpOverload] | None:
    """{node name: functional twin} for every mutating node, or None if one mutation is not local."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    swaps: dict[str, OpOverload] = {}
    for n in graph.nodes:
        schema = getattr(n.target, "_schema", None) if n.op == "call_function" else None
        if schema is None or not schema.is_mutable:
            continue
        twin = functional_twin(n.target)
        written = n.args[0] if n.args else None
        if twin is None or n.kwargs.keys() - {a.name for a in twin._schema.arguments[1:]}:
            return None
        if not isinstance(written, Node) or written.op != "call_function":
            return None  # an input, parameter or buffer: the caller would see the write
        # A fresh tensor, or one made fresh by an in-place chain accepted above (`add_` then `relu_`).
        if _returns_alias(written) and written.name not in swaps:
            return None
        for reader in written.users:
            if reader is n:
                continue
            if order[reader] > order[n] or reader.op != "call_function" or _returns_alias(reader):
                return None  # it would read the mutated value, or holds a view that later readers see
        swaps[n.name] = twin
    return swaps


def functional_copy(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram | None:
    """A shallow copy of `ep` whose graph has every in-place node replaced by its functional twin
    (`ep` itself is untouched), `ep` itself when nothing mutates, None when some mutation is not local."""
    swaps = _local_mutations(ep.graph)
    if swaps is None:
        return None
    if not swaps:
        return ep
    graph = copy.deepcopy(ep.graph)
    for n in graph.nodes:
        if n.name in swaps:
            n.target = swaps[n.name]
    out = copy.copy(ep)
    out._graph_module = GraphModule(ep.graph_module, graph)
    return out


__all__ = ["functional_copy", "functional_twin"]
