"""ONNX -> graph IR (opsets 8-21).

Walk the ONNX nodes in order, keeping every tensor either as a numpy constant or as an `Act` (an IR
node's output). Nodes whose inputs are all constants are folded with onnx's numpy reference evaluator
(`onnx_fold.py`, which also runs unsupported nodes as `Opaque`); the others go to the converter
registered for (domain, op, opset) in `speccert.importers.onnx_ops`.
Every node that cannot be converted is collected (op type, node name, reason); the load then fails with
all of them at once, or, with `allow_unsupported`, keeps each as an `Opaque` node that can still run
(torch function or the reference evaluator) so `inspect` can show the whole table. The batch axis is
axis 0 of the ONNX input; IR shapes exclude it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch

from speccert.errors import InputError, UnsupportedModelError
from speccert.importers.attention import onnx_attention
from speccert.importers.circular import fuse_circular_convs
from speccert.importers.merges import merge_affine, merge_bias
from speccert.importers.onnx_check import check_faithful, reference_first
from speccert.importers.onnx_fold import fold, opaque_fn
from speccert.importers.onnx_lean import read_onnx_lean
from speccert.importers.onnx_model import input_spec, model_opset, return_freed_memory, without_weights
from speccert.importers.onnx_ops import (
    Act,
    NotConvertible,
    Value,
    find_converter,
)
from speccert.importers.onnx_ops.fusions import fuse_activations
from speccert.importers.onnx_ops.pattern import DOMAIN as FUSED_DOMAIN
from speccert.importers.ort_reference import Reference
from speccert.importers.problems import group_problems
from speccert.importers.sorting import fuse_sorts
from speccert.ir.graph import INPUT, Graph, ModelSource, Node, file_sha256, live_nodes
from speccert.ir.ops import FIXED_METADATA, ConvTranspose, Linear, Op, Opaque, fixed_names
from speccert.limits import check_bytes

Problem = tuple[str, str, str]


_STEP = "discontinuous step function: no Lipschitz bound"
_KNOWN_REASONS = {
    "Sign": _STEP,
    "Floor": _STEP,
    "Ceil": _STEP,
    "Round": _STEP,
    "If": "control flow is not supported",
    "Loop": "control flow is not supported",
    "Scan": "control flow is not supported",
    "Exp": "exp has no global Lipschitz bound",
    "Log": "log has no global Lipschitz bound",
}


class _Builder:
    """The converters' BuildContext: adds IR nodes, tracking a sample activation to know shapes."""

    def __init__(self, opset: int, input_shape: tuple[int, ...], batch_fixed_one: bool) -> None:
        self.opset = opset
        self.batch_fixed_one = batch_fixed_one
        self.nodes: list[Node] = []
        self.samples: dict[str, torch.Tensor] = {INPUT: torch.zeros((1, *input_shape))}
        self.base = "node"
        self.created: list[str] = []
        self.exclusive: set[int] = set()  # ids of the constants only the node being converted reads

    def param(self, a: np.ndarray) -> torch.Tensor:
        if id(a) in self.exclusive and a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable:
            self.exclusive.discard(id(a))  # handed out once: a second parameter from it gets a copy
            return torch.from_numpy(a)
        return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))

    def _unique(self, name: str) -> str:
        name = name or "node"
        out, i = name, 1
        while out in self.samples:
            out, i = f"{name}_{i}", i + 1
        return out

    def add(self, op: Op, inputs: Sequence[Act], hint: str = "") -> Act:
        name = self._unique(self.base + hint)
        with torch.no_grad():
            try:
                y = op.forward(*(self.samples[a.name] for a in inputs))
            except Exception as exc:  # any failure to run means the node cannot be represented
                raise NotConvertible(
                    f"{op.describe()} cannot run on input shape(s) "
                    f"{[list(a.shape) for a in inputs]}: {str(exc).splitlines()[0]}"
                ) from None
        self.samples[name] = y
        self.nodes.append(Node(name, op, tuple(a.name for a in inputs)))
        self.created.append(name)
        return Act(name, tuple(y.shape[1:]))

    def mark_fixed(self) -> None:
        """The Linear / ConvTranspose nodes the node being converted became are fixed (they read a weight
        the file's metadata names: speccert.ir.FIXED_METADATA)."""
        made = set(self.created)
        for i, n in enumerate(self.nodes):
            if n.name in made and isinstance(n.op, (Linear, ConvTranspose)):
                self.nodes[i] = dataclasses.replace(n, op=dataclasses.replace(n.op, fixed=True))


def load_onnx(
    path: str | os.PathLike[str],
    input_shape: tuple[int, ...] | None = None,
    *,
    check: bool = True,
    allow_unsupported: bool = False,
) -> Graph:
    """Import an ONNX classifier (opsets 8-21) into the graph IR.

    >>> g = load_onnx("models/mlp.onnx")                       # doctest: +SKIP
    >>> g.forward(torch.rand(2, *g.input_shape)).shape          # doctest: +SKIP

    Raises InputError (unreadable file, external data outside the folder), UsageError (several inputs,
    dynamic or wrong input shape), UnsupportedModelError listing every unconvertible node (unless
    `allow_unsupported`), InternalError when the IR disagrees with onnxruntime (`check`). With
    `allow_unsupported`, unsupported nodes become `Opaque` and the faithfulness check is skipped when any
    remain (the graph cannot be certified anyway; it only serves `inspect`).
    """
    path = Path(path)
    reference: list[Reference | None] = [None]
    sha: list[str | None] = [None]

    def first_onnxruntime(structure: onnx.ModelProto) -> None:
        """A big model's onnxruntime run, done before this process holds the weights."""
        run = reference_first(path, structure, input_shape) if check else None
        if run is not None:
            sha[0] = file_sha256(path)  # meanwhile
            reference[0] = run.result()

    model, arrays = read_onnx_lean(path, first_onnxruntime)
    opset = model_opset(path, model)
    input_name, shape, batch = input_spec(model, input_shape)
    attention = onnx_attention(model.graph, input_name)
    if attention:  # one line naming it, not the batch-moving reshapes met first (attention.py)
        raise UnsupportedModelError(f"{path}: the model uses attention", attention)
    # a float64 sample of the declared input is the least the import allocates (before it does)
    check_bytes(f"model input '{input_name}' of shape {list(shape)}", 8 * math.prod(shape))
    b = _Builder(opset, shape, batch_fixed_one=batch == 1)
    nodes = fuse_activations(model.graph)
    values: dict[str, Value | None] = {
        t.name: arrays[t.name] if t.name in arrays else onnx.numpy_helper.to_array(t)
        for t in model.graph.initializer
    }
    model, nodes = without_weights(model, nodes)
    return_freed_memory()
    values[input_name] = Act(INPUT, shape)
    # each constant is dropped after its last reader: the IR holds its own copy by then
    readers = Counter(n for node in nodes for n in node.input if n)
    keep = {o.name for o in model.graph.output}
    # a weight read from the file into its own array and read by one node becomes that node's
    # parameter without a copy (_Builder.param); every other constant is copied
    solo = {n for n in arrays if readers[n] == 1 and n not in keep}
    del arrays
    problems: list[tuple[Problem, list[str]]] = []
    fixed = _fixed_weights(path, model)
    ir_to_onnx: dict[str, str] = {}
    failed: set[str] = set()  # outputs of reported nodes that have no value
    for node in nodes:
        label = node.name or (node.output[0] if node.output else node.op_type)
        missing = [n for n in node.input if n and n not in values]
        if missing:
            raise InputError(f"{path}: node '{label}' reads undefined tensor(s) {missing} (corrupt model?)")
        inputs = [values[n] if n else None for n in node.input]
        if any(n and values[n] is None and n in failed for n in node.input):
            # Downstream of a node already reported (and not evaluable): reported once, at its source.
            failed.update(o for o in node.output if o)
            for o in node.output:
                if o:
                    values[o] = None
            continue
        b.exclusive = {id(values[n]) for n in node.input if n in solo}
        outs = _convert_node(b, node, inputs, label, opset, problems, failed)
        if fixed.intersection(node.input):
            b.mark_fixed()
        for name, v in zip(node.output, outs, strict=False):
            if name:
                values[name] = v
                if isinstance(v, Act) and v.name in b.created:
                    ir_to_onnx.setdefault(v.name, name)
        for n in filter(None, node.input):
            readers[n] -= 1
            if readers[n] == 0 and n not in keep:
                values.pop(n, None)
    return _finish(
        path,
        model,
        values,
        b,
        problems,
        ir_to_onnx,
        input_name,
        shape,
        batch,
        reference[0] if check else False,
        allow_unsupported,
        sha[0],
    )


def _fixed_weights(path: Path, model: onnx.ModelProto) -> set[str]:
    """The initializers the file's metadata names as fixed layers' weights (speccert's writer records an
    upsampling's MatMuls there): a JSON list of names, or an InputError."""
    raw = next((p.value for p in model.metadata_props if p.key == FIXED_METADATA), None)
    if raw is None:
        return set()
    names = fixed_names(raw)
    if names is None:
        raise InputError(f"{path}: metadata '{FIXED_METADATA}' is not a JSON list of tensor names")
    return set(names)


def _convert_node(
    b: _Builder,
    node: onnx.NodeProto,
    inputs: list[Value | None],
    label: str,
    opset: int,
    problems: list[tuple[Problem, list[str]]],
    failed: set[str],
) -> list[Value | None]:
    """`node`'s output values: folded, converted, or (its problem recorded) Opaque stand-ins."""
    b.base, b.created = label, []
    try:
        if node.domain not in ("", "ai.onnx", FUSED_DOMAIN):
            raise NotConvertible(f"operator domain '{node.domain}' is not supported")
        conv = find_converter(node.domain, node.op_type, opset)
        if node.input and not any(isinstance(v, Act) for v in inputs):
            outs = fold(node, inputs, opset)
        elif conv is None:
            raise NotConvertible(
                _KNOWN_REASONS.get(node.op_type, "no converter for this operator (no Lipschitz bound known)")
            )
        else:
            outs = conv.fn(b, node, inputs)
    except NotConvertible as exc:
        outs = _as_opaque(b, node, inputs, exc.reason, opset)
        problems.append(((node.op_type, label, exc.reason), list(b.created)))
        failed.update(o for o, v in zip(node.output, outs, strict=False) if o and v is None)
    return outs


def _as_opaque(
    b: _Builder, node: onnx.NodeProto, inputs: list[Value | None], reason: str, opset: int
) -> list[Value | None]:
    """Opaque IR nodes standing for `node`'s outputs (None where it cannot be evaluated)."""
    label = b.base
    acts = [v for v in inputs if isinstance(v, Act)]
    b.created = []
    if not acts:
        return [None] * len(node.output)
    outs: list[Value | None] = []
    for i, _ in enumerate(node.output):
        fn = opaque_fn(node, inputs, opset, i)
        b.base = label if i == 0 else (node.output[i] or f"{label}:{i}")
        try:
            outs.append(b.add(Opaque(source_op=node.op_type, reason=reason, fn=fn), acts))
        except NotConvertible:
            outs.append(None)
    return outs


def _finish(
    path: Path,
    model: onnx.ModelProto,
    values: dict[str, Value | None],
    b: _Builder,
    problems: list[tuple[Problem, list[str]]],
    ir_to_onnx: dict[str, str],
    input_name: str,
    shape: tuple[int, ...],
    batch: int | None,
    check: Reference | bool | None,
    allow_unsupported: bool,
    sha: str | None = None,
) -> Graph:
    """The graph from the converted nodes, checked against onnxruntime unless `check` is False (a
    Reference: onnxruntime's output computed before the weights were read)."""
    if len(model.graph.output) != 1:
        raise UnsupportedModelError(f"{path}: the model has {len(model.graph.output)} outputs; one is needed")
    out_name = model.graph.output[0].name
    out = values.get(out_name)
    if not isinstance(out, Act):
        report = [p for p, _ in problems]
        raise UnsupportedModelError(
            f"{path}: output '{out_name}' cannot be computed from the input"
            + ("" if not report else " (see unsupported nodes)"),
            report,
        )
    nodes = live_nodes(merge_bias(merge_affine(b.nodes, out.name), out.name), out.name)
    live = {n.name for n in nodes}
    report = [p for p, created in problems if not created or live.intersection(created)]
    sha = sha or file_sha256(path)
    source = ModelSource(
        str(path),
        "onnx",
        sha,
        {
            "onnx_input": input_name,
            "onnx_output": out_name,
            "onnx_opset": str(max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))),
        },
    )
    graph = fuse_sorts(fuse_circular_convs(Graph(shape, nodes, out.name, source, torch.float32)))
    live &= {n.name for n in graph.nodes}  # parts rewritten: importers.circular, importers.sorting
    for n in graph.unsupported():
        if not isinstance(n.op, Opaque):
            report.append((n.op.op_type, n.name, "softmax is only supported as the model's output"))
    if report and not allow_unsupported:
        raise UnsupportedModelError(f"{path}: {len(report)} unsupported node(s)", group_problems(report))
    if check is not False and not graph.unsupported():
        return_freed_memory()  # the converted constants: before onnxruntime loads its own copy
        mapped = {k: v for k, v in ir_to_onnx.items() if k in live}
        ref = check if isinstance(check, Reference) else None
        check_faithful(path, model, graph, input_name, batch, mapped, reference=ref)
    return graph


def unsupported_reasons(graph: Graph) -> dict[str, str]:
    """Node name -> why it has no Lipschitz bound, for every unsupported node of `graph`."""
    out = {}
    for n in graph.unsupported():
        out[n.name] = (
            n.op.reason if isinstance(n.op, Opaque) else "softmax is only supported as the model's output"
        )
    return out


__all__ = ["load_onnx", "unsupported_reasons"]
