"""Walk a `torch.export` program (core ATen ops) and build the IR graph through the converter registry.

Why this route: `torch.export` hands us the model as a flat graph of ATen ops with every Python-level
construct (submodules, functional calls, `x.view(x.size(0), -1)`, normalisation written inline) already
resolved, and `run_decompositions()` reduces the ~2,000 ATen ops to the small core set (convolution,
addmm, _native_batch_norm_legit_no_training, max_pool2d_with_indices, mean.dim, view, ...). One small
converter per core op then covers models written in any style, and TorchScript files reach the same
table through torch's own TorchScript -> ExportedProgram converter (see torch_import.py). Walking
`torch.fx.symbolic_trace` instead would see `nn.Module` calls and `torch.*` functions in all their
Python spellings and cannot trace data-dependent shapes.

Constant sub-graphs (a weight's `permute`, shape arithmetic on `sym_size`) are evaluated here, so
converters only see input-dependent tensors (`TensorValue`) and concrete constants.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind

from speccert.errors import UnsupportedModelError
from speccert.importers.aten_ops.base import (
    ATEN_OPS,
    ConvertContext,
    NotAvailable,
    PendingCircularPad,
    TensorValue,
    Unsupported,
    schema_args,
)
from speccert.importers.aten_ops.householder import find_householders
from speccert.importers.aten_ops.l2pool import find_l2pools
from speccert.importers.merges import merge_affine
from speccert.importers.problems import ATTENTION, group_problems
from speccert.importers.sorting import fuse_sorts
from speccert.ir.graph import INPUT, Graph, ModelSource, Node, live_nodes
from speccert.ir.ops import FIXED_METADATA, Householder, Opaque

Tensor = torch.Tensor

_TAKES_CIRCULAR_PAD = {
    "aten.conv1d.default",
    "aten.conv2d.default",
    "aten.conv1d.padding",
    "aten.conv2d.padding",
    "aten.convolution.default",
}

# Runtime checks torch.export inserts; they compute nothing.
_IGNORED = {
    "aten._assert_scalar.default",
    "aten._assert_tensor_metadata.default",
    "aten._assert_async.msg",
    "aten.sym_constrain_range_for_size.default",
    "aten.sym_constrain_range.default",
    "aten._functional_assert_async.msg",
}


_KNOWN_REASONS = {
    "aten.scaled_dot_product_attention.default": ATTENTION,
    "aten._scaled_dot_product_flash_attention_for_cpu.default": ATTENTION,
    "aten._scaled_dot_product_efficient_attention.default": ATTENTION,
    "aten.bmm.default": ATTENTION,
    "aten.baddbmm.default": ATTENTION,
}


class _UpstreamOpaque(Unsupported):
    """A node that only unpacks the result of an op already reported as unsupported."""


def op_name(target: Any) -> str:
    """'aten.convolution.default' for torch.ops.aten.convolution.default; the qualified name otherwise."""
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    return getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or str(target)


def _flat(v: Any) -> list[Any]:
    if isinstance(v, (list, tuple)):
        return [y for x in v for y in _flat(x)]
    return [v]


def _has_tensor_value(v: Any) -> bool:
    return any(isinstance(x, (TensorValue, NotAvailable, PendingCircularPad)) for x in _flat(v))


def _placeholder_values(
    ep: ExportedProgram, fixed_keys: frozenset[str]
) -> tuple[dict[str, Any], dict[int, str], set[int], list[str]]:
    """Constants for lifted parameters/buffers/constants, their state_dict keys, the ids of those among
    `fixed_keys` (fixed layers' weights), and the user inputs."""
    values: dict[str, Any] = {}
    names: dict[int, str] = {}
    fixed: set[int] = set()
    user: list[str] = []
    for spec in ep.graph_signature.input_specs:
        arg_name = getattr(spec.arg, "name", None)
        if arg_name is None:
            continue
        if spec.kind == InputKind.USER_INPUT:
            user.append(arg_name)
            continue
        t: Any = None
        if spec.target is not None:
            t = ep.state_dict.get(spec.target, ep.constants.get(spec.target))
        values[arg_name] = t
        if (
            isinstance(t, Tensor)
            and spec.target is not None
            and spec.kind in (InputKind.PARAMETER, InputKind.BUFFER)
        ):
            names[id(t)] = spec.target
            if spec.target in fixed_keys:
                fixed.add(id(t))
    return values, names, fixed, user


def _materialise_pending(
    ctx: ConvertContext, node: torch.fx.Node, env: dict[str, Any], problems: list[tuple[str, str, str]]
) -> bool:
    """Circular padding that does not feed a convolution becomes an Opaque node of its own (reported)."""
    found = False
    for a in node.all_input_nodes:
        v = env.get(a.name)
        if isinstance(v, PendingCircularPad):
            pads = [p for b, e in reversed(v.pads) for p in (b, e)]
            reason = "circular padding not followed by a convolution"
            op = Opaque(
                source_op="aten.pad.default",
                reason=reason,
                fn=lambda x, pads=pads: F.pad(x, pads, mode="circular"),
            )
            consumer, ctx.node_name = ctx.node_name, a.name
            env[a.name] = ctx.emit(op, [v.value])
            ctx.node_name = consumer
            problems.append(("aten.pad.default", a.name, reason))
            found = True
    return found


def _opaque(ctx: ConvertContext, node: torch.fx.Node, env: dict[str, Any], reason: str) -> Any:
    """An Opaque IR node that runs the original ATen op (so `inspect` still works), or a constant."""
    inputs: list[TensorValue] = []
    for v in _flat([env.get(a.name) for a in node.all_input_nodes]):
        if isinstance(v, TensorValue) and v not in inputs:
            inputs.append(v)
    target = node.target
    if not callable(target) or not inputs:
        return NotAvailable(f"result of unsupported {op_name(target)}", upstream_failure=True)

    def run(*xs: Tensor) -> Tensor:
        subst = {v.name: x for v, x in zip(inputs, xs, strict=True)}

        def arg(n: torch.fx.Node) -> Any:
            v = env[n.name]
            return subst[v.name] if isinstance(v, TensorValue) else v

        args = torch.fx.node.map_arg(node.args, arg)
        kwargs = torch.fx.node.map_arg(node.kwargs, arg)
        try:
            y = target(*args, **kwargs)  # type: ignore[operator]
        except RuntimeError as exc:  # e.g. a view baked for the trace's batch size
            raise NotImplementedError(f"{op_name(target)} cannot run on this input: {exc}") from None
        return y[0] if isinstance(y, (tuple, list)) else y

    try:
        probe = run(*(torch.zeros(v.shape, dtype=v.dtype) for v in inputs))
        shape, dtype = tuple(int(d) for d in probe.shape), probe.dtype
    except Exception:  # noqa: BLE001 - the probe is best effort; the exported shape is the fallback
        val = node.meta.get("val")
        if not isinstance(val, Tensor):
            return NotAvailable(f"result of unsupported {op_name(target)}", upstream_failure=True)
        shape = (ctx.batch, *(int(d) for d in val.shape[1:]))
        dtype = val.dtype
    op = Opaque(source_op=op_name(target), reason=reason, fn=run)
    name = ctx.unique(node.name)
    ctx.nodes.append(Node(name, op, tuple(v.name for v in inputs), shape[1:]))
    return TensorValue(name, shape, dtype)


def _fold(target: Callable[..., Any], node: torch.fx.Node, env: dict[str, Any], ctx: ConvertContext) -> Any:
    """Evaluate a node none of whose inputs depends on the model input."""
    args = torch.fx.node.map_arg(node.args, lambda n: env[n.name])
    kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: env[n.name])
    with torch.no_grad():
        y = target(*args, **kwargs)
    named = [
        ctx.param_names[id(t)]
        for t in _flat([args, list(kwargs.values())])
        if isinstance(t, Tensor) and id(t) in ctx.param_names
    ]
    if isinstance(y, Tensor) and len(named) == 1:
        ctx.param_names[id(y)] = named[0]  # `permute(l.weight)` still names the node `l`
    if ctx.fixed and isinstance(y, Tensor):  # only a .pt2 with fixed weights pays for this
        sources = [id(t) for t in _flat([args, list(kwargs.values())]) if isinstance(t, Tensor)]
        if sources and all(i in ctx.fixed for i in sources):
            ctx.fixed.add(id(y))  # `t(weight)` of a fixed weight is still a constant of the file
    return y


def exported_to_graph(
    ep: ExportedProgram,
    input_shape: tuple[int, ...],
    batch: int,
    *,
    allow_unsupported: bool,
    source: ModelSource | None = None,
    share_constants: bool = False,
) -> Graph:
    """Convert an exported program with one tensor input to a Graph over `input_shape`.

    `batch` is the batch size the program was traced with: reshapes must keep it at axis 0.
    Every unsupported node is collected (op, node name, reason); unless `allow_unsupported`, they are
    raised together as UnsupportedModelError, otherwise they become Opaque nodes. With
    `share_constants` the graph's parameters share memory with the program's (a program nobody else
    holds, like a loaded .pt2: the copy would double the model's memory).
    """
    ctx = ConvertContext(batch, share=share_constants)
    # the fixed layers' weights the archive records (speccert.importers.torch_import reads and checks them)
    fixed_keys = frozenset(json.loads(source.extra.get(FIXED_METADATA, "[]")) if source is not None else ())
    env, ctx.param_names, ctx.fixed, user = _placeholder_values(ep, fixed_keys)
    if len(user) != 1:
        raise UnsupportedModelError(
            f"the model takes {len(user)} inputs; speccert needs exactly one tensor input"
        )
    env[user[0]] = TensorValue(INPUT, (batch, *input_shape))
    problems: list[tuple[str, str, str]] = []
    keep_alive: list[Any] = []  # folded constants stay referenced so their ids stay unique
    output: Any = None
    l2pools = find_l2pools(ep.graph)  # LPPool p = 2 written as x^2, avg_pool, sign, sqrt: one L2Pool
    householders = find_householders(ep.graph)  # deel-torchlip's HouseHolder: one Householder
    for node in ep.graph.nodes:
        ctx.node_name = node.name
        if node.op == "output":
            output = node
        elif node.name in l2pools.parts or node.name in householders.parts:
            env[node.name] = None  # inside a pattern, computed by its last node
        elif node.name in l2pools.ops and isinstance(env[l2pools.ops[node.name][0]], TensorValue):
            pooled, op = l2pools.ops[node.name]
            env[node.name] = ctx.emit(op, [env[pooled]])
        elif node.name in householders.ops and isinstance(env[householders.ops[node.name][0]], TensorValue):
            z, theta = householders.ops[node.name]
            angles = torch.as_tensor(env[theta]).detach().reshape(-1).float().clone()
            env[node.name] = ctx.emit(Householder(angles), [env[z]])
        elif node.op != "placeholder":
            _walk_node(ep, ctx, node, env, problems, keep_alive, allow_unsupported)
    if problems and not allow_unsupported:
        raise UnsupportedModelError(
            "the model uses operations speccert cannot import", group_problems(problems)
        )
    assert output is not None
    result = _graph_result(ep, output, env)
    nodes = live_nodes(merge_affine(ctx.nodes, result.name), result.name)  # a Center leaves its mean dead
    graph = Graph(input_shape, nodes, result.name, source)
    return fuse_sorts(graph)  # MaxMin / GroupSort-2 / CReLU parts -> one Sort (importers.sorting)


def _walk_node(
    ep: ExportedProgram,
    ctx: ConvertContext,
    node: torch.fx.Node,
    env: dict[str, Any],
    problems: list[tuple[str, str, str]],
    keep_alive: list[Any],
    allow_unsupported: bool,
) -> None:
    """Set `env[node.name]` for one node of the walk (neither a placeholder nor the output)."""
    if node.op == "get_attr":
        env[node.name] = getattr(ep.graph_module, str(node.target))
        return
    if node.op != "call_function":
        problems.append(
            (str(node.target), node.name, f"'{node.op}' nodes are not expected in an exported graph")
        )
        env[node.name] = NotAvailable(node.name)
        return
    name = op_name(node.target)
    if name in _IGNORED:
        env[node.name] = None
        return
    inputs = [env[n.name] for n in node.all_input_nodes]
    if any(isinstance(v, NotAvailable) and v.upstream_failure for v in _flat(inputs)):
        env[node.name] = NotAvailable(name, upstream_failure=True)  # reported once, at its source
        return
    env[node.name] = _convert_or_stand_in(ctx, node, name, inputs, env, problems, allow_unsupported)
    keep_alive.append(env[node.name])


def _convert_or_stand_in(
    ctx: ConvertContext,
    node: torch.fx.Node,
    name: str,
    inputs: list[Any],
    env: dict[str, Any],
    problems: list[tuple[str, str, str]],
    allow_unsupported: bool,
) -> Any:
    """The converted value of a call_function node, or (its problem recorded) an Opaque stand-in."""
    try:
        return _convert(ctx, node, name, inputs, env)
    except _UpstreamOpaque as exc:  # already reported at its source
        return _opaque(ctx, node, env, str(exc))
    except Unsupported as exc:
        reason = str(exc)
        if allow_unsupported and _materialise_pending(ctx, node, env, problems):
            try:  # the op itself may be fine once its padded input exists
                return _convert(ctx, node, name, [env[n.name] for n in node.all_input_nodes], env)
            except Unsupported as again:
                reason = str(again)
        problems.append((name, node.name, reason))
        # An Opaque stand-in (shape from a probe run) lets the walk go on, so later problems are
        # reported too (a ViT's attention products behind a permute that moves the batch axis).
        return _opaque(ctx, node, env, reason)


def _graph_result(ep: ExportedProgram, output: torch.fx.Node, env: dict[str, Any]) -> TensorValue:
    """The value of the program's one user output, which must depend on the model input."""
    outs = [
        v
        for v, spec in zip(_flat(output.args[0]), ep.graph_signature.output_specs, strict=False)
        if spec.kind == OutputKind.USER_OUTPUT
    ]
    if len(outs) != 1:
        raise UnsupportedModelError(
            f"the model returns {len(outs)} outputs; speccert needs exactly one tensor"
        )
    result = env[outs[0].name] if isinstance(outs[0], torch.fx.Node) else outs[0]
    if not isinstance(result, TensorValue):
        raise UnsupportedModelError(
            "the model's output does not depend on its input (or comes from an unsupported op)"
        )
    return result


def _arg_node(node: torch.fx.Node, i: int) -> torch.fx.Node:
    a = node.args[i]
    assert isinstance(a, torch.fx.Node)
    return a


def _convert(
    ctx: ConvertContext, node: torch.fx.Node, name: str, inputs: list[Any], env: dict[str, Any]
) -> Any:
    target = node.target
    if target is operator.getitem:
        seq: Any = env[_arg_node(node, 0).name]
        if not isinstance(seq, (list, tuple)):  # the producer was kept as one Opaque tensor
            raise _UpstreamOpaque(f"one result of the unsupported {op_name(_arg_node(node, 0).target)}")
        return seq[int(node.args[1])]  # type: ignore[arg-type]
    lost = [v for v in _flat(inputs) if isinstance(v, NotAvailable)]
    if lost:
        raise Unsupported(f"uses the {lost[0].what}, which speccert does not compute")
    if name in ("aten.sym_size.int", "aten.sym_numel.default"):
        x = env[_arg_node(node, 0).name]
        if isinstance(x, TensorValue):
            return x.shape[int(node.args[1])] if name == "aten.sym_size.int" else math.prod(x.shape)  # type: ignore[arg-type]
    pending = [v for v in _flat(inputs) if isinstance(v, PendingCircularPad)]
    if pending and name not in _TAKES_CIRCULAR_PAD:
        raise Unsupported(
            "its input is circularly padded (aten.pad mode 'circular'), which is supported only "
            "right before a convolution"
        )
    if not _has_tensor_value(inputs):
        if not callable(target):
            raise Unsupported(f"cannot evaluate {name}")
        return _fold(target, node, env, ctx)
    if not isinstance(target, torch._ops.OpOverload):
        raise Unsupported(f"Python function {name} applied to input-dependent values")
    if name not in ATEN_OPS:
        raise Unsupported(_KNOWN_REASONS.get(name, "no converter for this ATen op"))
    args = torch.fx.node.map_arg(node.args, lambda n: env[n.name])
    kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: env[n.name])
    return ATEN_OPS.get(name)(ctx, schema_args(target, tuple(args), dict(kwargs)))
