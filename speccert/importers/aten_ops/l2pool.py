"""torch's LPPool with p = 2 (deel-torchlip's ScaledL2NormPool2d), as `torch.export` writes it, found
before the walk so that its parts (x^2, sign, sqrt: no bound each) become one IR `L2Pool`:

    sq = pow(x, 2); m = avg_pool2d(sq, k, s, 0, ceil_mode); p = mul(sign(m), relu(abs(m)));
    r = mul(p, K)  (optional);  y = pow(r, 0.5)         ->   y = L2Pool(k, s, ceil_mode, K)(x)

sign(m) relu(|m|) = m. Every intermediate must be read only inside the pattern (else it is left alone
and its parts are reported as usual).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from speccert.importers.aten_ops.base import schema_args
from speccert.ir.ops import L2Pool

_POOLS = {"aten.avg_pool2d.default": 2, "aten.avg_pool1d.default": 1}


@dataclass
class L2Pools:
    """ops: name of each pattern's last node -> (name of its input x, the L2Pool); parts: the others."""

    ops: dict[str, tuple[str, L2Pool]] = field(default_factory=dict)
    parts: set[str] = field(default_factory=set)


def call(node: Any, *names: str) -> bool:
    """`node` is an FX call of one of the ATen ops `names`."""
    return isinstance(node, torch.fx.Node) and node.op == "call_function" and str(node.target) in names


def _only_user(node: torch.fx.Node, *names: str) -> torch.fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 and call(users[0], *names) else None


def _args(node: torch.fx.Node) -> list[Any]:
    assert isinstance(node.target, torch._ops.OpOverload)
    return schema_args(node.target, tuple(node.args), dict(node.kwargs))


def _match(sq: torch.fx.Node) -> tuple[list[torch.fx.Node], torch.fx.Node, torch.fx.Node, L2Pool] | None:
    """(the pattern's inner nodes, its last node, its input x, the L2Pool) for the x^2 node `sq`."""
    x, exponent = _args(sq)[:2]
    pool = _only_user(sq, *_POOLS)
    if not isinstance(x, torch.fx.Node) or exponent != 2 or pool is None:
        return None
    _, kernel, stride, padding, ceil_mode, _, divisor = (_args(pool) + [None] * 7)[:7]
    nd = _POOLS[str(pool.target)]
    kernel = tuple(kernel) * (nd if len(kernel) == 1 else 1)
    stride = tuple(stride or kernel) * (nd if len(stride or kernel) == 1 else 1)
    if any(padding) or divisor is not None:
        return None
    users = list(pool.users)
    sign = next((u for u in users if call(u, "aten.sign.default")), None)
    absolute = next((u for u in users if call(u, "aten.abs.default")), None)
    if len(users) != 2 or sign is None or absolute is None:
        return None
    relu = _only_user(absolute, "aten.relu.default")
    prod = _only_user(sign, "aten.mul.Tensor")
    if relu is None or prod is None or set(prod.args[:2]) != {sign, relu} or len(relu.users) != 1:
        return None
    parts, last, multiplier = [sq, pool, sign, absolute, relu, prod], prod, 1.0
    scale = _only_user(prod, "aten.mul.Tensor", "aten.mul.Scalar")
    if scale is not None and isinstance(scale.args[1], (int, float)) and scale.args[0] is prod:
        parts, last, multiplier = parts + [scale], scale, float(scale.args[1])
    root = _only_user(last, "aten.pow.Tensor_Scalar")
    if root is None or root.args[1] != 0.5:
        return None
    return parts, root, x, L2Pool(kernel, stride, bool(ceil_mode), multiplier)


def find_l2pools(graph: torch.fx.Graph) -> L2Pools:
    """Every L2 pool pattern of `graph` (module docstring)."""
    out = L2Pools()
    for node in graph.nodes:
        if not call(node, "aten.pow.Tensor_Scalar"):
            continue
        found = _match(node)
        if found is None:
            continue
        parts, root, x, op = found
        out.ops[root.name] = (x.name, op)
        out.parts.update(p.name for p in parts)
    return out
