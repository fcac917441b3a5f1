"""deel-torchlip's HouseHolder activation as `torch.export` writes it, found before the walk so that its
parts (products with comparison masks: no bound each) become one IR `Householder`:

    x, y = split(z, C/2, 1); t = view(theta)
    s = x * sin(t * 0.5) - y * cos(t * 0.5)
    a = x * le(s, 0) + (x * cos(t) + y * sin(t)) * gt(s, 0)
    b = y * le(s, 0) + (x * sin(t) - y * cos(t)) * gt(s, 0);   out = cat([a, b], 1)

The region between the split and the cat may hold only elementwise arithmetic and comparisons with 0,
every intermediate read inside it, and its constant factors must be sin / cos of theta or of theta * 0.5
for one constant theta (the program keeps theta, so the function is the exact reflection of
speccert.ir.ops.Householder). Which factor multiplies what is checked by the load's comparison with
torch (random inputs take both branches).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from speccert.importers.aten_ops.l2pool import call

_ARITHMETIC = {"aten.mul.Tensor", "aten.add.Tensor", "aten.sub.Tensor"}
_COMPARE = {"aten.le.Scalar", "aten.gt.Scalar", "aten.lt.Scalar", "aten.ge.Scalar"}
_TRIG = ("aten.sin.default", "aten.cos.default")


@dataclass
class Householders:
    """ops: name of each pattern's cat -> (name of the split input z, name of the node holding theta);
    parts: the pattern's other nodes (the walk leaves them out)."""

    ops: dict[str, tuple[str, str]] = field(default_factory=dict)
    parts: set[str] = field(default_factory=set)


def _angle(node: torch.fx.Node) -> torch.fx.Node | None:
    """theta's node for sin/cos(theta) or sin/cos(theta * 0.5) (as (the node, halved))."""
    arg = node.args[0]
    if call(arg, "aten.mul.Tensor") and isinstance(arg, torch.fx.Node) and arg.args[1] == 0.5:
        arg = arg.args[0]
    return arg if isinstance(arg, torch.fx.Node) else None


def _match(split: torch.fx.Node) -> tuple[list[torch.fx.Node], torch.fx.Node, torch.fx.Node] | None:
    """(the region's nodes, the cat, theta's node) for a split that starts the pattern."""
    args: list[Any] = [*split.args, 0, 0]
    z, size, dim = args[:3]
    shape = getattr(z.meta.get("val"), "shape", None) if isinstance(z, torch.fx.Node) else None
    pieces = list(split.users)
    if dim != 1 or shape is None or len(shape) < 2 or shape[1] != 2 * size or len(pieces) != 2:
        return None
    region: list[torch.fx.Node] = list(pieces)
    cat: torch.fx.Node | None = None
    frontier = list(pieces)
    while frontier:
        for u in frontier.pop().users:
            if call(u, "aten.cat.default"):
                if cat is not None and u is not cat:
                    return None
                cat = u
            elif u not in region:
                if not call(u, *(_ARITHMETIC | _COMPARE)) or len(region) > 40:
                    return None
                region.append(u)
                frontier.append(u)
    if cat is None or cat.args[1:] != (1,) or len(cat.args[0]) != 2:  # type: ignore[arg-type]
        return None
    angles: set[torch.fx.Node] = set()
    for n in region[2:]:
        if any(u is not cat and u not in region for u in n.users):
            return None
        for a in n.args:
            if a in region:
                continue
            if str(n.target) in _COMPARE:
                if a != 0:
                    return None
            elif call(a, *_TRIG) and isinstance(a, torch.fx.Node) and _angle(a) is not None:
                angles.add(_angle(a))  # type: ignore[arg-type]
            else:
                return None
    if len(angles) != 1:
        return None
    return region, cat, angles.pop()


def find_householders(graph: torch.fx.Graph) -> Householders:
    """Every HouseHolder pattern of `graph` (module docstring)."""
    out = Householders()
    for node in graph.nodes:
        if not call(node, "aten.split.Tensor"):
            continue
        found = _match(node)
        if found is None:
            continue
        region, cat, theta = found
        z = node.args[0]
        assert isinstance(z, torch.fx.Node)
        out.ops[cat.name] = (z.name, theta.name)
        out.parts.update(n.name for n in [node, *region])
    return out
