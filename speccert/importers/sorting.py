"""Gradient-norm-preserving activations (MaxMin, GroupSort, FullSort) recognised after import and
rewritten to one IR `Sort`, so that their bound is 1 and not what their parts' rules compose to.

Exporters write them in pieces, which the converters import one by one:

- MaxMin of two halves (orthogonium, plain torch): Split -> Max(a, b), Min(a, b) -> Concat; GroupSort-2
  of deel-torchlip: Reshape [.., n/2, 2, ..] -> ReduceMin, ReduceMax over the pair -> Concat. Both
  become Slice, Slice -> Extremum, Extremum -> Concat, whose rules give 2 L (two hypot steps); the
  pattern is a sort of each pair (u_i, u_{i+h}) along the concatenated axis:
      Concat(max(u[:h], u[h:]), min(u[:h], u[h:]))  =  Reshape [.., 2h, ..] of
                                                      Sort(descending) of Reshape [.., 2, h, ..] of u.
- deel-torchlip's MaxMin, cat(relu(u), relu(-u)) (a CReLU; hypot rule: sqrt 2 L): with v = (u, 0)
  along the axis (a zero Pad, an isometry), sort_desc(v_i, v_{i+n}) = (max(u, 0), min(u, 0))
  = (relu(u), -relu(-u)), so the pair is Affine(+1 | -1) of that sort; norm 1 * 1 * 1.
- GroupSort / FullSort with g > 2 are a Reshape, a TopK or aten.sort, a Reshape: converted directly.

Every rewrite is exact (the faithfulness check at load runs after it) and keeps the Concat's node name,
so whatever reads the Concat reads the rewritten value. Nodes left without readers are dropped.
"""

from __future__ import annotations

import torch

from speccert.ir.graph import Graph, Node, live_nodes
from speccert.ir.ops import Activation, Affine, Concat, Extremum, Pad, Reshape, Slice, Sort


def _split_axis(shape: tuple[int, ...], axis: int, parts: int) -> tuple[int, ...]:
    n = shape[axis]
    return (*shape[:axis], parts, n // parts, *shape[axis + 1 :])


class _Rewriter:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.names = {n.name for n in graph.nodes}
        self.by_name = {n.name: n for n in graph.nodes}

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def shape(self, name: str) -> tuple[int, ...]:
        return self.graph.shape_of(name)

    def slice_key(self, name: str) -> tuple[str, int, int, int, int] | None:
        """(u, axis, start, stop, step) when node `name` is a Slice of u (equal Slices are one key:
        a ReduceMin and a ReduceMax each write their own)."""
        n = self.by_name.get(name)
        if n is None or not isinstance(n.op, Slice):
            return None
        return (n.inputs[0], n.op.axis, n.op.start, n.op.stop, n.op.step)

    def halves(self, keys: set[tuple[str, int, int, int, int] | None], axis: int) -> str | None:
        """u when the two keys are u[:h] and u[h:2h] along `axis` (u of length 2h there), else None."""
        if None in keys or len(keys) != 2:
            return None
        ka, kb = sorted(k for k in keys if k is not None)
        u = ka[0]
        if kb[0] != u or ka[1] != axis or kb[1] != axis or (ka[4], kb[4]) != (1, 1):
            return None
        n, h = self.shape(u)[axis], ka[3] - ka[2]
        return u if (ka[2], ka[3], kb[2], kb[3]) == (0, h, h, n) and n == 2 * h else None

    def pair_sort(self, concat: Node) -> list[Node] | None:
        """Concat(max(u[:h], u[h:]), min(...)) (or min first) -> Reshape, Sort, Reshape."""
        e1, e2 = (self.by_name.get(i) for i in concat.inputs)
        if e1 is None or e2 is None or not isinstance(e1.op, Extremum) or not isinstance(e2.op, Extremum):
            return None
        keys1 = {self.slice_key(i) for i in e1.inputs}
        if e1.op.is_max == e2.op.is_max or keys1 != {self.slice_key(i) for i in e2.inputs}:
            return None
        assert isinstance(concat.op, Concat)
        u = self.halves(keys1, concat.op.axis)
        if u is None:
            return None
        return self._sorted(concat, u, concat.op.axis, descending=e1.op.is_max)

    def _sorted(self, concat: Node, u: str, ax: int, descending: bool) -> list[Node]:
        shape = self.shape(u)
        r1 = Node(self.fresh(f"{concat.name}/pairs"), Reshape(_split_axis(shape, ax, 2)), (u,))
        s = Node(self.fresh(f"{concat.name}/sort"), Sort(axis=ax, descending=descending), (r1.name,))
        r2 = Node(concat.name, Reshape(shape), (s.name,))
        return [r1, s, r2]

    def _negation_of(self, name: str) -> str | None:
        n = self.by_name.get(name)
        if n is None or not isinstance(n.op, Affine):
            return None
        neg = bool((n.op.scale == -1).all()) and not bool(n.op.shift.any())
        return n.inputs[0] if neg else None

    def crelu(self, concat: Node) -> list[Node] | None:
        """Concat(relu(u), relu(-u)) (either order) -> Pad zeros, pair sort, Affine(+1 | -1)."""
        p, q = (self.by_name.get(i) for i in concat.inputs)
        if not all(n is not None and isinstance(n.op, Activation) and n.op.fn == "relu" for n in (p, q)):
            return None
        assert p is not None and q is not None and isinstance(concat.op, Concat)
        if self._negation_of(q.inputs[0]) == p.inputs[0]:
            u, descending = p.inputs[0], True  # (relu(u), relu(-u)) = (max(u,0), -min(u,0))
        elif self._negation_of(p.inputs[0]) == q.inputs[0]:
            u, descending = q.inputs[0], False  # (relu(-u), relu(u)) = (-min(u,0), max(u,0))
        else:
            return None
        ax = concat.op.axis
        shape = self.shape(u)
        pads = tuple((0, shape[ax]) if i == ax else (0, 0) for i in range(len(shape)))
        pad = Node(self.fresh(f"{concat.name}/with_zeros"), Pad(pads), (u,))
        padded = (*shape[:ax], 2 * shape[ax], *shape[ax + 1 :])
        nodes = self._sorted_padded(concat, pad, padded, ax, descending)
        signs = torch.ones((2, shape[ax]), dtype=torch.float32)
        signs[1 if descending else 0] = -1.0
        view = tuple(2 * shape[ax] if i == ax else 1 for i in range(len(shape)))
        sign = Affine(scale=signs.reshape(view), shift=torch.zeros(view))
        return [pad, *nodes, Node(concat.name, sign, (nodes[-1].name,))]

    def _sorted_padded(
        self, concat: Node, pad: Node, padded: tuple[int, ...], ax: int, descending: bool
    ) -> list[Node]:
        r1 = Node(self.fresh(f"{concat.name}/pairs"), Reshape(_split_axis(padded, ax, 2)), (pad.name,))
        s = Node(self.fresh(f"{concat.name}/sort"), Sort(axis=ax, descending=descending), (r1.name,))
        r2 = Node(self.fresh(f"{concat.name}/sorted"), Reshape(padded), (s.name,))
        return [r1, s, r2]


def fuse_sorts(graph: Graph) -> Graph:
    """`graph` with every MaxMin / GroupSort-2 / CReLU pattern (module docstring) rewritten to a Sort;
    the same graph object when there is none."""
    rw = _Rewriter(graph)
    out: list[Node] = []
    changed = False
    for node in graph.nodes:
        new = None
        if isinstance(node.op, Concat) and len(node.inputs) == 2:
            new = rw.pair_sort(node) or rw.crelu(node)
        if new is None:
            out.append(node)
        else:
            out.extend(new)
            changed = True
    if not changed:
        return graph
    kept = live_nodes(out, graph.output)
    return Graph(graph.input_shape, kept, graph.output, graph.source, graph.dtype)
