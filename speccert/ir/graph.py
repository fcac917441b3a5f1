"""The graph IR: a DAG of nodes over one input tensor, topologically ordered, with static shapes.

Shapes exclude the batch dimension, which stays symbolic. The graph owns its parameters (torch
tensors held by the ops); `Graph.to_torch()` returns an `nn.Module` whose `nn.Parameter`s share
storage with them, so training the module trains the graph and the graph can be certified at any step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from speccert.errors import InputError, UsageError
from speccert.ir.ops import BatchNorm, Op, Opaque, Softmax, is_fixed
from speccert.limits import check_bytes

Tensor = torch.Tensor
INPUT = "input"


@dataclass(frozen=True, eq=False)
class Node:
    """One operator application. `inputs` name earlier nodes or the graph input (`INPUT`)."""

    name: str
    op: Op
    inputs: tuple[str, ...]
    shape: tuple[int, ...] = ()

    @property
    def op_type(self) -> str:
        return self.op.op_type


def live_nodes(nodes: list[Node], output: str) -> list[Node]:
    """The nodes `output` depends on, in their order (dead nodes left by a rewrite dropped)."""
    live, keep = {output}, []
    for n in reversed(nodes):
        if n.name in live:
            live.update(n.inputs)
            keep.append(n)
    return keep[::-1]


@dataclass(frozen=True)
class ModelSource:
    """Where a graph came from: file path, format name ('onnx', 'pt2', 'torchscript', 'state_dict',
    'pickle', 'python'), the file's sha256 and, for ONNX, the original input name / layout."""

    path: str
    format: str
    sha256: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def all_finite(t: Tensor) -> bool:
    """Whether every entry of `t` is finite. A finite sum proves it (a NaN or an infinity makes any sum
    NaN or infinite), and takes 0.04 s for a 25088x4096 VGG layer; only when the sum is not finite (a
    non-finite entry, or an overflow) are the entries looked at, in chunks of 2^20 (torch.isfinite on
    the whole layer allocates |t|, as big as t, and a mask)."""
    if bool(torch.isfinite(t.sum())):
        return True
    return all(bool(torch.isfinite(c).all()) for c in t.reshape(-1).split(1 << 20))


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Graph:
    """A DAG over one input. Construct with nodes in topological order; shapes are inferred."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        nodes: list[Node],
        output: str | None = None,
        source: ModelSource | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.input_shape = tuple(int(d) for d in input_shape)
        self.source = source
        self.dtype = dtype
        self.nodes: list[Node] = []
        self.output = output if output is not None else (nodes[-1].name if nodes else INPUT)
        self._check_order(nodes)
        _check_batchnorms(nodes)
        self.nodes = self._infer_shapes(nodes)

    # ---- structure -------------------------------------------------------------------------------
    def _check_order(self, nodes: list[Node]) -> None:
        seen = {INPUT}
        for node in nodes:
            if node.name in seen:
                raise ValueError(f"duplicate node name {node.name!r}")
            for i in node.inputs:
                if i not in seen:
                    raise ValueError(f"node {node.name!r} reads {i!r} before it is defined")
            n = type(node.op).n_inputs
            if n >= 0 and len(node.inputs) != n:
                raise ValueError(
                    f"node {node.name!r} ({node.op_type}) needs {n} inputs, got {len(node.inputs)}"
                )
            seen.add(node.name)
        if self.output not in seen:
            raise ValueError(f"graph output {self.output!r} is not a node")

    def _infer_shapes(self, nodes: list[Node]) -> list[Node]:
        shapes: dict[str, tuple[int, ...]] = {INPUT: self.input_shape}
        check_bytes(f"model input of shape {list(self.input_shape)}", 8 * math.prod(self.input_shape))
        values: dict[str, Tensor] = {INPUT: torch.zeros((1, *self.input_shape), dtype=self.dtype)}
        out: list[Node] = []
        with torch.no_grad():
            for node in nodes:
                try:
                    y = node.op.forward(*(values[i] for i in node.inputs))
                except NotImplementedError:
                    y = None
                except RuntimeError as exc:
                    ins = ", ".join(str(list(shapes[i])) for i in node.inputs)
                    raise UsageError(
                        f"node '{node.name}' ({node.op.describe()}) cannot take input shape {ins}: {exc}".split(
                            "\n"
                        )[0]
                    ) from None
                if y is None:
                    shape = node.shape
                    y = torch.zeros((1, *shape), dtype=self.dtype)
                else:
                    shape = tuple(y.shape[1:])
                shapes[node.name] = shape
                values[node.name] = y
                out.append(dataclasses.replace(node, shape=shape))
        return out

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.node(self.output).shape if self.output != INPUT else self.input_shape

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def shape_of(self, name: str) -> tuple[int, ...]:
        return self.input_shape if name == INPUT else self.node(name).shape

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]

    def unsupported(self) -> list[Node]:
        """Nodes that have no Lipschitz bound (Opaque ops, Softmax anywhere but the output)."""
        bad = [n for n in self.nodes if isinstance(n.op, Opaque)]
        bad += [n for n in self.nodes if isinstance(n.op, Softmax) and n.name != self.output]
        return bad

    def parameters(self) -> dict[str, Tensor]:
        return {f"{n.name}.{k}": v for n in self.nodes for k, v in n.op.parameters().items()}

    def check_finite(self) -> None:
        """Raise InputError naming every parameter that holds NaN or Inf."""
        bad = [name for name, t in self.parameters().items() if t.is_floating_point() and not all_finite(t)]
        if bad:
            raise InputError(f"model has NaN or Inf weights in {', '.join(bad)}; refusing to certify it")

    # ---- execution -------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Run the graph on a batch `x` of shape [N, *input_shape]."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise UsageError(
                f"input shape {list(x.shape[1:])} does not match the model's input shape {list(self.input_shape)}"
            )
        values: dict[str, Tensor] = {INPUT: x}
        for node in self.nodes:
            values[node.name] = node.op.forward(*(values[i] for i in node.inputs))
        return values[self.output]

    def activations(self, x: Tensor) -> dict[str, Tensor]:
        """Every node's output on `x` (the input under key INPUT)."""
        values: dict[str, Tensor] = {INPUT: x}
        for node in self.nodes:
            values[node.name] = node.op.forward(*(values[i] for i in node.inputs))
        return values

    __call__ = forward

    def to_torch(self) -> GraphModule:
        return GraphModule(self)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Graph:
        """A copy of the graph with every parameter moved (new tensors: no sharing)."""

        def move(op: Op) -> Op:
            changes = {}
            for f in dataclasses.fields(op):
                v = getattr(op, f.name)
                if isinstance(v, Tensor):
                    changes[f.name] = v.detach().to(
                        device=device, dtype=dtype if v.is_floating_point() else None
                    )
            return dataclasses.replace(op, **changes)

        nodes = [dataclasses.replace(n, op=move(n.op)) for n in self.nodes]
        return _graph_with_shapes_of(self, nodes, dtype)

    def replace_nodes(self, nodes: list[Node], output: str | None = None) -> Graph:
        return Graph(self.input_shape, nodes, output or self.output, self.source, self.dtype)

    def __repr__(self) -> str:
        lines = [f"Graph(input {list(self.input_shape)}, {len(self.nodes)} nodes, output {self.output!r})"]
        lines += [f"  {n.name}: {n.op.describe()} {list(n.inputs)} -> {list(n.shape)}" for n in self.nodes]
        return "\n".join(lines)


def _check_batchnorms(nodes: list[Node]) -> None:
    """A BatchNorm divides by sqrt(var + eps): a negative or zero var + eps is an invalid model (NaN or
    Inf outputs), refused at load with the channel named rather than certified or crashed on later."""
    for node in nodes:
        op = node.op
        if isinstance(op, BatchNorm):
            den = op.var.detach().double() + float(op.eps)
            bad = torch.nonzero(~(den > 0) | ~torch.isfinite(den)).flatten()
            if bad.numel():
                c = int(bad[0])
                raise InputError(
                    f"BatchNorm node '{node.name}': var + eps must be positive, but channel {c} has "
                    f"var {float(op.var[c]):g} and eps {float(op.eps):g}"
                )


def _graph_with_shapes_of(src: Graph, nodes: list[Node], dtype: torch.dtype | None) -> Graph:
    """Build a graph whose shapes are copied from `src` (no forward pass on the target device)."""
    g = Graph.__new__(Graph)
    g.input_shape, g.source, g.output = src.input_shape, src.source, src.output
    g.dtype = dtype or src.dtype
    g.nodes = [dataclasses.replace(n, shape=s.shape) for n, s in zip(nodes, src.nodes, strict=True)]
    return g


class GraphModule(nn.Module):
    """`nn.Module` view of a Graph. Its parameters *are* the graph's tensors (shared storage):
    an optimizer step on this module changes the graph. BatchNorm statistics and the tensors of fixed
    layers (`is_fixed`: an imported upsampling's constant) are buffers.

    Each node's tensors live in a submodule at the node's name (dots nest, as in the model the graph came
    from), so `node.weight` is the parameter's name and a `.pt2` written from this module reads back with
    the same layer names. `forward` reads every op's tensors from those submodules (the same objects in
    eager mode), so that tools which swap a module's parameters (torch.export's non-strict tracer,
    torch.func's functional_call) see them used: read through the graph's ops, torch.export stored each
    weight a second time as a constant and traced the graph on that copy."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.graph = graph
        # per node: its submodule and, per field to rebind, the tensor registered for it
        self._holders: list[tuple[nn.Module, dict[str, Tensor]]] = []
        for node in graph.nodes:
            tensors = node.op.parameters()
            if not tensors:
                self._holders.append((self, {}))
                continue
            holder = self._holder(node.name)
            fields = {f.name for f in dataclasses.fields(node.op)}
            for key, t in tensors.items():
                # BatchNorm statistics, and an upsampling's constant (fixed: never trained), are buffers:
                # a .pt2 written from this module keeps them apart from the weights, so the importer
                # reads the fixed layer back as fixed
                if key in ("mean", "var") or is_fixed(node.op):
                    holder.register_buffer(key, t, persistent=True)
                    continue
                p = t if isinstance(t, nn.Parameter) else nn.Parameter(t, requires_grad=t.is_floating_point())
                holder.register_parameter(key, p)
                # Point the op at the Parameter object itself so both see the same tensor.
                object.__setattr__(node.op, key, p)
            self._holders.append((holder, {k: getattr(node.op, k) for k in tensors if k in fields}))

    def _holder(self, name: str) -> nn.Module:
        """A new submodule at `name`, one level per dot. A segment that is empty, or that would shadow
        something that is not a submodule (a method, an attribute, a parameter), gets a leading 'n_'; a
        path another node already holds gets a suffix '_2', '_3', ..."""

        def taken(at: nn.Module, part: str) -> bool:
            return (
                part in vars(at) or hasattr(type(at), part) or part in at._parameters or part in at._buffers
            )

        at: nn.Module = self
        parts = name.split(".")
        for i, part in enumerate(parts):
            part = part if part and not taken(at, part) else f"n_{part}"
            if i == len(parts) - 1:  # the node's own holder: never shared with another node
                base, k = part, 1
                while part in at._modules or taken(at, part):
                    k += 1
                    part = f"{base}_{k}"
            child = at._modules.get(part)
            if child is None:
                child = nn.Module()
                at.add_module(part, child)
            at = child
        return at

    def forward(self, x: Tensor) -> Tensor:
        g = self.graph
        if tuple(x.shape[1:]) != g.input_shape:
            return g.forward(x)  # its error names both shapes
        values: dict[str, Tensor] = {INPUT: x}
        for node, (holder, registered) in zip(g.nodes, self._holders, strict=True):
            op = node.op
            # the submodule's tensor where a tracer swapped it and the op still holds the one registered;
            # the op's own where training swapped that (e.g. AOL's reparametrised W); eager: no copy
            swap = {
                k: v
                for k, t in registered.items()
                if getattr(op, k) is t and (v := getattr(holder, k)) is not t
            }
            if swap:
                op = dataclasses.replace(op, **swap)
            values[node.name] = op.forward(*(values[i] for i in node.inputs))
        return values[g.output]
