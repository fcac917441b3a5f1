"""Activations that exporters write as several ONNX nodes, fused back into one before conversion.

- SiLU:  y = x * Sigmoid(x)                                   -> speccert.Silu(x)
- hardswish: y = x * HardSigmoid(x; alpha 1/6, beta 1/2)       -> speccert.Hardswish(x)
- GELU:  y = (x * (Erf(x / sqrt 2) + 1)) * 0.5, in the orders torch and speccert write it
                                                              -> speccert.Gelu(x)
(`Div(x, sqrt 2)` may also be `Mul(x, 1/sqrt 2)`; the 0.5 may multiply x first.) Without fusion their
parts (Erf, a product of two activations) have no Lipschitz bound, yet the whole is 1.13-Lipschitz.
- L2 pool (torch's LPPool with p = 2, deel-torchlip's ScaledL2NormPool2d), both exporters:
  y = Pow(Mul(Mul(Sign(m), Relu(Abs(m))), K), 0.5) with m = AveragePool(Pow(x, 2)), pads 0
                                                              -> speccert.L2Pool(x; pool attributes, K)
  (sign(m) relu(|m|) = m; K = kh kw; the Mul by K may be missing). Its parts (x^2, Sign, sqrt) have no
  bound; the whole is 1-Lipschitz for non-overlapping windows (speccert.ir.ops.L2Pool).
- deel-torchlip's HouseHolder activation: Split into halves ... Concat       -> speccert.Householder(x)
  (speccert.importers.onnx_ops.householder).
The fused nodes live in the private domain 'speccert' and have converters like any other op.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper

from speccert.importers.onnx_ops import BuildContext, Value, act, converter
from speccert.importers.onnx_ops.examples import model
from speccert.importers.onnx_ops.householder import try_householder
from speccert.importers.onnx_ops.pattern import DOMAIN, constants, is_const
from speccert.ir.ops import Activation, L2Pool


def fuse_activations(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The graph's nodes with SiLU and GELU decompositions replaced by single fused nodes."""
    nodes = list(graph.node)
    if not any(n.op_type in ("Sigmoid", "Erf", "HardSigmoid", "Pow", "Split") for n in nodes):
        return nodes
    consts = constants(graph)
    keep_outputs = {o.name for o in graph.output}
    fused_any = False
    while True:
        consumers: dict[str, list[onnx.NodeProto]] = {}
        producers: dict[str, onnx.NodeProto] = {}
        for n in nodes:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
            for o in n.output:
                producers[o] = n

        def users(name: str, consumers: dict[str, list[onnx.NodeProto]] = consumers) -> list[onnx.NodeProto]:
            return consumers.get(name, [])

        def producer(name: str, producers: dict[str, onnx.NodeProto] = producers) -> onnx.NodeProto | None:
            return producers.get(name)

        def other(node: onnx.NodeProto, name: str) -> str | None:
            ins = list(node.input)
            if len(ins) != 2 or name not in ins:
                return None
            return ins[1] if ins[0] == name else ins[0]

        def private(name: str, users: Callable[[str], list[onnx.NodeProto]] = users) -> bool:
            return len(users(name)) == 1 and name not in keep_outputs  # one reader, not a graph output

        fused = None
        for n in nodes:
            if n.op_type == "Sigmoid":
                fused = _try_silu(n, users, other, private)
            elif n.op_type == "HardSigmoid":
                fused = _try_hardswish(n, users, other, private)
            elif n.op_type == "Erf":
                fused = _try_gelu(n, users, producer, other, private, consts)
            elif n.op_type == "Pow":
                fused = _try_l2pool(n, users, other, private, consts)
            elif n.op_type == "Split":
                fused = try_householder(n, users, producer, keep_outputs, consts)
            if fused is not None:
                break
        if fused is None:
            return _toposort(nodes, graph) if fused_any else nodes
        new_node, dead = fused
        idx = next(i for i, m in enumerate(nodes) if any(m is d for d in dead))
        nodes = [m for m in nodes if all(m is not d for d in dead)]
        nodes.insert(idx, new_node)
        fused_any = True


def _try_silu(n, users, other, private, kind="Sigmoid", name="Silu"):  # noqa: ANN001, ANN202
    if n.op_type != kind or not private(n.output[0]):
        return None
    (mul,) = users(n.output[0])
    if mul.op_type != "Mul" or other(mul, n.output[0]) != n.input[0]:
        return None
    fused = helper.make_node(
        name, [n.input[0]], [mul.output[0]], name=mul.name or mul.output[0], domain=DOMAIN
    )
    return fused, [n, mul]


def _try_hardswish(n, users, other, private):  # noqa: ANN001, ANN202
    a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
    if abs(a.get("alpha", 0.2) - 1 / 6) > 1e-6 or abs(a.get("beta", 0.5) - 0.5) > 1e-6:
        return None
    fused = _try_silu(n, users, other, private, kind="HardSigmoid", name="Hardswish")
    return fused


def _try_gelu(n, users, producer, other, private, consts):  # noqa: ANN001, ANN202
    if n.op_type != "Erf" or not private(n.output[0]):
        return None
    scale = producer(n.input[0])
    if scale is None or not private(n.input[0]) or len(scale.input) != 2:
        return None
    x = scale.input[0]
    if not (
        scale.op_type == "Div"
        and is_const(consts, scale.input[1], math.sqrt(2.0))
        or scale.op_type == "Mul"
        and is_const(consts, other(scale, x) or "", 1 / math.sqrt(2.0))
    ):
        if scale.op_type == "Mul" and is_const(consts, x, 1 / math.sqrt(2.0)):
            x = scale.input[1]
        else:
            return None
    (add,) = users(n.output[0])
    if (
        add.op_type != "Add"
        or not is_const(consts, other(add, n.output[0]) or "", 1.0)
        or not private(add.output[0])
    ):
        return None
    (mul1,) = users(add.output[0])
    if mul1.op_type != "Mul":
        return None
    left = other(mul1, add.output[0])
    if left == x:  # (x * (1 + erf)) * 0.5
        if not private(mul1.output[0]):
            return None
        (mul2,) = users(mul1.output[0])
        if mul2.op_type != "Mul" or not is_const(consts, other(mul2, mul1.output[0]) or "", 0.5):
            return None
        last, dead = mul2, [scale, n, add, mul1, mul2]
    else:  # (0.5 * x) * (1 + erf)
        half = producer(left or "")
        if (
            half is None
            or half.op_type != "Mul"
            or not private(left)
            or other(half, x) is None
            or not is_const(consts, other(half, x) or "", 0.5)
        ):
            return None
        last, dead = mul1, [scale, n, add, half, mul1]
    fused = helper.make_node("Gelu", [x], [last.output[0]], name=last.name or last.output[0], domain=DOMAIN)
    return fused, dead


def _only_user(users, private, name: str, op_type: str):  # noqa: ANN001, ANN202
    """The one reader of `name` when it is private and of `op_type`, else None."""
    if not private(name):
        return None
    (user,) = users(name)
    return user if user.op_type == op_type else None


def _try_l2pool(n, users, other, private, consts):  # noqa: ANN001, ANN202
    if len(n.input) != 2 or not is_const(consts, n.input[1], 2.0):
        return None
    pool = _only_user(users, private, n.output[0], "AveragePool")
    if pool is None:
        return None
    a = {x.name: onnx.helper.get_attribute_value(x) for x in pool.attribute}
    kernel = list(a.get("kernel_shape", []))
    if (
        any(a.get("pads", [0]))
        or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
        or any(d != 1 for d in a.get("dilations", [1]))
        or len(kernel) not in (1, 2)
    ):
        return None
    readers = users(pool.output[0])
    sign = next((r for r in readers if r.op_type == "Sign"), None)
    absolute = next((r for r in readers if r.op_type == "Abs"), None)
    if len(readers) != 2 or sign is None or absolute is None:
        return None
    relu = _only_user(users, private, absolute.output[0], "Relu")
    prod = _only_user(users, private, sign.output[0], "Mul")
    if relu is None or prod is None or other(prod, sign.output[0]) != relu.output[0]:
        return None
    dead, last, multiplier = [n, pool, sign, absolute, relu, prod], prod, 1.0
    scale = _only_user(users, private, prod.output[0], "Mul")
    k = other(scale, prod.output[0]) if scale is not None else None
    if scale is not None and k in consts and consts[k].size == 1:
        dead, last, multiplier = dead + [scale], scale, float(consts[k].reshape(-1)[0])
    root = _only_user(users, private, last.output[0], "Pow")
    if root is None or len(root.input) != 2 or not is_const(consts, root.input[1], 0.5):
        return None
    fused = helper.make_node(
        "L2Pool",
        [n.input[0]],
        [root.output[0]],
        name=root.name or root.output[0],
        domain=DOMAIN,
        kernel_shape=kernel,
        strides=list(a.get("strides", [1] * len(kernel))),
        ceil_mode=int(a.get("ceil_mode", 0)),
        multiplier=multiplier,
    )
    return fused, dead + [root]


def _toposort(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    ready = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {""}
    out: list[onnx.NodeProto] = []
    pending = list(nodes)
    while pending:
        for i, n in enumerate(pending):
            if all(x in ready for x in n.input):
                out.append(n)
                ready.update(n.output)
                del pending[i]
                break
        else:  # a cycle or a dangling input: leave the rest in order, the importer reports it
            return out + pending
    return out


def _silu_example() -> onnx.ModelProto:
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])]
    return model(nodes, (3, 5), {}, 13)


def _gelu_examples() -> list:
    sqrt2 = np.array(math.sqrt(2.0), np.float32)
    torch_style = [
        helper.make_node("Div", ["x", "c"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["a"]),
        helper.make_node("Mul", ["x", "a"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["y"]),
    ]
    half_first = [
        helper.make_node("Mul", ["x", "c"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["one", "e"], ["a"]),
        helper.make_node("Mul", ["half", "x"], ["h"]),
        helper.make_node("Mul", ["h", "a"], ["y"]),
    ]
    consts = {"one": np.array(1.0, np.float32), "half": np.array(0.5, np.float32)}
    return [
        lambda: model(torch_style, (7,), {**consts, "c": sqrt2}, 13),
        lambda: model(half_first, (2, 3), {**consts, "c": np.array(1 / math.sqrt(2.0), np.float32)}, 17),
    ]


@converter("Silu", opsets=(1, 21), domain=DOMAIN, examples=[_silu_example])
def convert_fused_silu(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value | None]:
    """x * sigmoid(x) -> Activation('silu')."""
    return [ctx.add(Activation("silu"), [act(inputs[0])])]


def _hardswish_example() -> onnx.ModelProto:
    nodes = [
        helper.make_node("HardSigmoid", ["x"], ["s"], alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["s", "x"], ["y"]),
    ]
    return model(nodes, (3, 5), {}, 13)


@converter("Hardswish", opsets=(1, 21), domain=DOMAIN, examples=[_hardswish_example])
def convert_fused_hardswish(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value | None]:
    """x * HardSigmoid(x; 1/6, 1/2) -> Activation('hardswish')."""
    return [ctx.add(Activation("hardswish"), [act(inputs[0])])]


@converter("Gelu", opsets=(1, 21), domain=DOMAIN, examples=_gelu_examples())
def convert_fused_gelu(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value | None]:
    """x * (1 + erf(x / sqrt 2)) / 2 -> Activation('gelu')."""
    return [ctx.add(Activation("gelu"), [act(inputs[0])])]


def _l2pool_example(ceil_mode: int, strides: list[int], k: float | None) -> Callable[[], onnx.ModelProto]:
    """How torch.onnx writes LPPool2d(2, 2): sqrt(sign(m) relu(|m|) * K), m the average of x^2."""
    nodes = [
        helper.make_node("Pow", ["x", "two"], ["sq"]),
        helper.make_node(
            "AveragePool", ["sq"], ["m"], kernel_shape=[2, 2], strides=strides, ceil_mode=ceil_mode
        ),
        helper.make_node("Sign", ["m"], ["s"]),
        helper.make_node("Abs", ["m"], ["a"]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Mul", ["s", "r"], ["p"]),
    ]
    consts = {"two": np.array(2.0, np.float32), "half": np.array(0.5, np.float32)}
    if k is not None:
        nodes.append(helper.make_node("Mul", ["p", "k"], ["pk"]))
        consts["k"] = np.array(k, np.float32)
    nodes.append(helper.make_node("Pow", ["pk" if k is not None else "p", "half"], ["y"]))
    return lambda: model(nodes, (3, 5, 5), consts, 17)


@converter(
    "L2Pool",
    opsets=(1, 21),
    domain=DOMAIN,
    examples=[
        _l2pool_example(0, [2, 2], 4.0),
        _l2pool_example(1, [1, 1], 4.0),
        _l2pool_example(1, [2, 2], None),
    ],
)
def convert_fused_l2pool(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value | None]:
    """sqrt(K * AveragePool(x^2)) (LPPool p = 2) -> L2Pool."""
    a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
    op = L2Pool(
        kernel=tuple(int(k) for k in a["kernel_shape"]),
        stride=tuple(int(s) for s in a["strides"]),
        ceil_mode=bool(a.get("ceil_mode", 0)),
        multiplier=float(a.get("multiplier", 1.0)),
    )
    return [ctx.add(op, [act(inputs[0])])]
