"""deel-torchlip's HouseHolder activation as torch.onnx writes it, fused into one IR `Householder`:

    x, y = Split(z, 2 halves, axis 1)
    s = x * Sin(theta/2) - y * Cos(theta/2)            (the selector; torch's legacy exporter keeps
    a = x * Cast(s <= 0) + (x * Cos(theta) + y * Sin(theta)) * Cast(s > 0)     theta/2 and theta as
    b = y * Cast(s <= 0) + (x * Sin(theta) - y * Cos(theta)) * Cast(s > 0)     initializers, Sin/Cos
    out = Concat(a, b, axis 1)                                                  as nodes)

The region between the Split and the Concat may hold only elementwise arithmetic, comparisons with 0
and Casts, every intermediate read inside it; the constant factors come from Sin/Cos of two
initializers theta/2 and theta (one exactly half the other). Which factor multiplies what is not
re-derived here: the load's faithfulness check compares the fused node with onnxruntime (random inputs
take both branches). The dynamo exporter stores the sines and cosines as float32 numbers instead: that
file's function is the reflection only up to their rounding, and is not continuous where the branches
meet, so it has no Lipschitz bound: refused, naming the activation.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import torch
from onnx import helper

from speccert.importers.onnx_ops import BuildContext, NotConvertible, Value, act, converter
from speccert.importers.onnx_ops.examples import model
from speccert.importers.onnx_ops.pattern import DOMAIN, is_const
from speccert.ir.ops import Householder

_ARITHMETIC = {"Mul", "Add", "Sub", "Cast", "Not"}  # Not(Greater): LessOrEqual before opset 12
_COMPARE = {"LessOrEqual", "Greater", "Less", "GreaterOrEqual"}
PRECOMPUTED = (
    "HouseHolder activation with its sines and cosines stored as float32 constants (the dynamo "
    "exporter's form): the stored function is discontinuous where its branches meet, so it has no "
    "Lipschitz bound; export with dynamo=False or as .pt2 (theta kept)"
)

Users = Callable[[str], list[onnx.NodeProto]]
Producer = Callable[[str], onnx.NodeProto | None]


def _region(split: onnx.NodeProto, users: Users) -> tuple[list[onnx.NodeProto], onnx.NodeProto] | None:
    """The nodes reachable from the Split's outputs before one Concat, when all are allowed kinds."""
    region: list[onnx.NodeProto] = []
    concat: onnx.NodeProto | None = None
    frontier, seen = list(split.output), set()
    while frontier:
        for u in users(frontier.pop()):
            if u.op_type == "Concat":
                if concat is not None and u is not concat:
                    return None
                concat = u
            elif id(u) not in seen:
                if u.op_type not in _ARITHMETIC | _COMPARE or len(region) >= 40:
                    return None
                seen.add(id(u))
                region.append(u)
                frontier.extend(u.output)
    return (region, concat) if concat is not None else None


def try_householder(
    split: onnx.NodeProto,
    users: Users,
    producer: Producer,
    outputs: set[str],
    consts: dict[str, np.ndarray],
) -> tuple[onnx.NodeProto, list[onnx.NodeProto]] | None:
    """(the fused node, the nodes it replaces) when `split` starts the pattern of the module docstring."""
    attrs = {a.name: helper.get_attribute_value(a) for a in split.attribute}
    if len(split.output) != 2 or attrs.get("axis", 0) != 1:
        return None
    sizes = consts.get(split.input[1]) if len(split.input) > 1 and split.input[1] else None
    if sizes is not None and (sizes.size != 2 or sizes[0] != sizes[1]):
        return None
    found = _region(split, users)
    if found is None:
        return None
    region, concat = found
    inside = {o for n in region for o in n.output} | set(split.output)
    region_out = inside - set(split.output)
    compares = [n for n in region if n.op_type in _COMPARE]
    muls = [n for n in region if n.op_type == "Mul"]
    if len(concat.input) != 2 or not set(concat.input) <= region_out or not compares or len(muls) < 6:
        return None
    if helper.get_attribute_value(next(a for a in concat.attribute if a.name == "axis")) != 1:
        return None
    trig: list[onnx.NodeProto] = []
    plain = False  # a factor that is a stored number, not Sin/Cos of an angle
    for n in region:
        if any(o in outputs or not _read_inside(o, region, concat, users) for o in n.output):
            return None
        for i in n.input:
            if i in inside:
                continue
            src = producer(i)
            if n.op_type in _COMPARE:
                if not is_const(consts, i, 0.0):
                    return None
            elif src is not None and src.op_type in ("Sin", "Cos") and src.input[0] in consts:
                if not _read_inside(i, region, concat, users):
                    return None
                if all(src is not t for t in trig):
                    trig.append(src)
            elif i in consts:
                plain = True
            else:
                return None
    angles = {t.input[0]: consts[t.input[0]].reshape(-1).astype(np.float64) for t in trig}
    fused = helper.make_node(
        "Householder",
        [split.input[0]],
        [concat.output[0]],
        name=concat.name or concat.output[0],
        domain=DOMAIN,
    )
    if not trig:
        fused.attribute.append(helper.make_attribute("precomputed", 1))
        return fused, [split, *region, concat]
    if len(angles) != 2 or plain:  # a mix is some other computation: its parts are reported as usual
        return None
    a1, a2 = angles.values()
    half, full = (a1, a2) if np.array_equal(a1 * 2, a2) else (a2, a1)
    if not np.array_equal(half * 2, full):
        return None
    theta = helper.make_tensor("theta", onnx.TensorProto.DOUBLE, [full.size], full.tolist())
    fused.attribute.append(helper.make_attribute("theta", theta))
    return fused, [split, *region, *trig, concat]


def _read_inside(name: str, region: list[onnx.NodeProto], concat: onnx.NodeProto, users: Users) -> bool:
    """`name` is read only by nodes of the region or the Concat."""
    return all(any(r is n for n in region) or r is concat for r in users(name))


def _example(precomputed: bool) -> Callable[[], onnx.ModelProto]:
    """The legacy exporter's HouseHolder on 4 channels (2 pairs); `precomputed`: the dynamo form."""
    theta = np.array([0.7, -2.1], np.float32).reshape(1, 2, 1)
    n = helper.make_node
    nodes = [n("Split", ["x", "sizes"], ["x0", "y0"], axis=1)]
    if precomputed:
        c = {"sh": np.sin(theta / 2), "ch": np.cos(theta / 2), "c": np.cos(theta), "s": np.sin(theta)}
    else:
        c = {"half": theta / 2, "full": theta}
        nodes += [n("Sin", ["half"], ["sh"]), n("Cos", ["half"], ["ch"]), n("Cos", ["full"], ["c"])]
        nodes += [n("Sin", ["full"], ["s"])]
    nodes += [
        n("Mul", ["x0", "sh"], ["m0"]),
        n("Mul", ["y0", "ch"], ["m1"]),
        n("Sub", ["m0", "m1"], ["sel"]),
        n("Mul", ["x0", "c"], ["m2"]),
        n("Mul", ["y0", "s"], ["m3"]),
        n("Add", ["m2", "m3"], ["a2"]),
        n("Mul", ["x0", "s"], ["m4"]),
        n("Mul", ["y0", "c"], ["m5"]),
        n("Sub", ["m4", "m5"], ["b2"]),
        n("LessOrEqual", ["sel", "zero"], ["le"]),
        n("Cast", ["le"], ["kf"], to=1),
        n("Greater", ["sel", "zero"], ["gt"]),
        n("Cast", ["gt"], ["rf"], to=1),
        n("Mul", ["x0", "kf"], ["ak"]),
        n("Mul", ["a2", "rf"], ["ar"]),
        n("Add", ["ak", "ar"], ["a"]),
        n("Mul", ["y0", "kf"], ["bk"]),
        n("Mul", ["b2", "rf"], ["br"]),
        n("Add", ["bk", "br"], ["b"]),
        n("Concat", ["a", "b"], ["y"], axis=1),
    ]
    inits = {**c, "sizes": np.array([2, 2], np.int64), "zero": np.array(0.0, np.float32)}
    return lambda: model(nodes, (4, 3), inits, 13)


@converter("Householder", opsets=(1, 21), domain=DOMAIN, examples=[_example(False)])
def convert_fused_householder(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value | None]:
    """HouseHolder activation (Split, selector, reflection, Concat) with theta kept -> Householder."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    x = act(inputs[0])
    if not x.shape or x.shape[0] % 2:
        raise NotConvertible(
            f"HouseHolder activation over {list(x.shape)[:1]} channels (an even count is needed)"
        )
    if attrs.get("precomputed"):
        raise NotConvertible(PRECOMPUTED)
    theta = onnx.numpy_helper.to_array(attrs["theta"]).astype(np.float32)
    return [ctx.add(Householder(torch.from_numpy(theta.copy())), [x])]
