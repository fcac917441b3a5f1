"""Graph IR -> ONNX (opset 13-21), so a model imported from ONNX and fine-tuned goes back out as ONNX.

The batch axis is a symbolic dimension 'N'; the input and output keep the names the graph's source
recorded (`ModelSource.extra['onnx_input' / 'onnx_output']`) or are called 'input' / 'output'. The
layout is the IR's: an NHWC model imported with its internal Transpose keeps that Transpose. Each IR op
maps to the ONNX op(s) computing exactly the same function; Opaque nodes cannot be exported. An imported
nearest-neighbour upsampling goes back out as a Resize (so a fine-tuned file, re-imported, still has it
fixed); a bilinear one as the MatMuls and Transposes it became, the file's metadata naming their weights
(speccert.ir.FIXED_METADATA), so they re-import fixed too.

    >>> save_onnx(speccert.load("models/mlp.onnx"), "out.onnx")   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from speccert.errors import UnsupportedModelError, UsageError
from speccert.exporters.onnx_activations import export_activation
from speccert.exporters.onnx_patterns import export_center, export_householder, export_l2pool
from speccert.ir.graph import INPUT, Graph, Node
from speccert.ir.ops import (
    FIXED_METADATA,
    Activation,
    Add,
    Affine,
    AvgPool,
    BatchNorm,
    Center,
    Concat,
    Conv,
    ConvTranspose,
    Extremum,
    GlobalAvgPool,
    Householder,
    L2Pool,
    Linear,
    MaxPool,
    Op,
    Pad,
    PRelu,
    Reshape,
    Slice,
    Softmax,
    Sort,
    Standardize,
    Transpose,
    is_fixed,
)


class _Writer:
    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._names: set[str] = set()
        self.fixed: list[str] = []  # the weights of fixed layers (speccert.ir.is_fixed), by initializer name

    def weight(self, name: str, op: Op, value: torch.Tensor) -> str:
        """The initializer of a layer's weight, recorded as fixed where the layer is."""
        out = self.const(name, value)
        if is_fixed(op):
            self.fixed.append(out)
        return out

    def const(self, name: str, value: torch.Tensor | np.ndarray, dtype: type = np.float32) -> str:
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        name = self.fresh(name)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr.astype(dtype)), name))
        return name

    def fresh(self, name: str) -> str:
        out, i = name, 1
        while out in self._names:
            out, i = f"{name}_{i}", i + 1
        self._names.add(out)
        return out

    def node(self, op_type: str, inputs: list[str], output: str, **kw: Any) -> str:
        self.nodes.append(
            helper.make_node(op_type, inputs, [output], name=self.fresh(f"{output}/{op_type}"), **kw)
        )
        return output


def _pads(padding: tuple[tuple[int, int], ...]) -> list[int]:
    return [b for b, _ in padding] + [e for _, e in padding]


def _bias(w: _Writer, name: str, op: Linear | Conv | ConvTranspose) -> list[str]:
    return [w.const(f"{name}.bias", op.bias)] if op.bias is not None else []


def _export_linear(
    w: _Writer, node: Node, op: Linear, xs: list[str], in_shape: tuple[int, ...], out: str
) -> None:
    name = node.name
    if len(in_shape) == 1:
        w.node("Gemm", [xs[0], w.weight(f"{name}.weight", op, op.weight), *_bias(w, name, op)], out, transB=1)
    elif op.bias is None:
        w.node("MatMul", [xs[0], w.weight(f"{name}.weight_t", op, op.weight.T)], out)
    else:
        mm = w.node(
            "MatMul", [xs[0], w.weight(f"{name}.weight_t", op, op.weight.T)], w.fresh(f"{name}/matmul")
        )
        w.node("Add", [mm, w.const(f"{name}.bias", op.bias)], out)


def _export_conv(
    w: _Writer, node: Node, op: Conv, xs: list[str], in_shape: tuple[int, ...], out: str
) -> None:
    name = node.name
    if op.padding_mode != "zeros":
        raise UnsupportedModelError(
            f"node '{name}': Conv with padding_mode={op.padding_mode} cannot be exported"
        )
    w.node(
        "Conv",
        [xs[0], w.const(f"{name}.weight", op.weight), *_bias(w, name, op)],
        out,
        kernel_shape=list(op.weight.shape[2:]),
        strides=list(op.stride),
        pads=_pads(op.padding),
        dilations=list(op.dilation),
        group=op.groups,
    )


def _is_nearest_upsample(op: ConvTranspose, in_shape: tuple[int, ...]) -> bool:
    """The layer an imported nearest-neighbour upsampling became (speccert.importers.lowering): fixed, a
    kernel of ones [C, 1, *s], stride s, one group per channel, no bias, padding or dilation."""
    c, k = in_shape[0], tuple(op.weight.shape[2:])
    return (
        op.fixed
        and op.bias is None
        and op.groups == c
        and tuple(op.weight.shape[:2]) == (c, 1)
        and tuple(op.stride) == k
        and not any(op.padding)
        and not any(op.output_padding)
        and all(d == 1 for d in op.dilation)
        and bool((op.weight == 1).all())
    )


def _export_conv_transpose(
    w: _Writer, node: Node, op: ConvTranspose, xs: list[str], in_shape: tuple[int, ...], out: str
) -> None:
    name = node.name
    if _is_nearest_upsample(op, in_shape):  # written back as the Resize it was (re-imported: fixed)
        scales = w.const(f"{name}.scales", np.array([1.0, 1.0, *op.stride], dtype=np.float32))
        w.node(
            "Resize",
            [xs[0], "", scales],
            out,
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        )
        return
    w.node(
        "ConvTranspose",
        [xs[0], w.weight(f"{name}.weight", op, op.weight), *_bias(w, name, op)],
        out,
        kernel_shape=list(op.weight.shape[2:]),
        strides=list(op.stride),
        pads=list(op.padding) * 2,
        output_padding=list(op.output_padding),
        dilations=list(op.dilation),
        group=op.groups,
    )


def _export_batchnorm(
    w: _Writer, node: Node, op: BatchNorm, xs: list[str], in_shape: tuple[int, ...], out: str
) -> None:
    ins = [xs[0]] + [w.const(f"{node.name}.{k}", getattr(op, k)) for k in ("weight", "bias", "mean", "var")]
    w.node("BatchNormalization", ins, out, epsilon=float(op.eps))


def _export_affine(
    w: _Writer, node: Node, op: Affine, xs: list[str], in_shape: tuple[int, ...], out: str
) -> None:
    name = node.name
    cur = xs[0]
    has_shift = bool((op.shift != 0).any())
    if not bool((op.scale == 1).all()):
        cur = w.node(
            "Mul",
            [cur, w.const(f"{name}.scale", op.scale)],
            out if not has_shift else w.fresh(f"{name}/mul"),
        )
    if has_shift or cur == xs[0]:
        w.node("Add", [cur, w.const(f"{name}.shift", op.shift)], out)


def _export_maxpool(
    w: _Writer, node: Node, op: MaxPool, xs: list[str], in_shape: tuple[int, ...], out: str
) -> None:
    w.node(
        "MaxPool",
        xs,
        out,
        kernel_shape=list(op.kernel),
        strides=list(op.stride),
        pads=_pads(op.padding),
        dilations=list(op.dilation),
        ceil_mode=int(op.ceil_mode),
    )


def _export_avgpool(
    w: _Writer, node: Node, op: AvgPool, xs: list[str], in_shape: tuple[int, ...], out: str
) -> None:
    w.node(
        "AveragePool",
        xs,
        out,
        kernel_shape=list(op.kernel),
        strides=list(op.stride),
        pads=_pads(op.padding),
        ceil_mode=int(op.ceil_mode),
        count_include_pad=int(op.count_include_pad),
    )


def _export_pad(w: _Writer, node: Node, op: Pad, xs: list[str], in_shape: tuple[int, ...], out: str) -> None:
    pads = [0] + [b for b, _ in op.pads] + [0] + [e for _, e in op.pads]
    w.node("Pad", [xs[0], w.const(f"{node.name}.pads", np.array(pads), np.int64)], out, mode="constant")


def _export_reshape(
    w: _Writer, node: Node, op: Reshape, xs: list[str], in_shape: tuple[int, ...], out: str
) -> None:
    w.node("Reshape", [xs[0], w.const(f"{node.name}.shape", np.array([0, *node.shape]), np.int64)], out)


def _export_slice(
    w: _Writer, node: Node, op: Slice, xs: list[str], in_shape: tuple[int, ...], out: str
) -> None:
    ints = [np.array([v]) for v in (op.start, op.stop, op.axis + 1, op.step)]
    names = [
        w.const(f"{node.name}.{k}", v, np.int64)
        for k, v in zip(("starts", "ends", "axes", "steps"), ints, strict=True)
    ]
    w.node("Slice", [xs[0], *names], out)


def _export_standardize(
    w: _Writer, node: Node, op: Standardize, xs: list[str], in_shape: tuple[int, ...], out: str
) -> None:
    name = node.name
    if w.opset < 17:
        raise UnsupportedModelError(f"node '{name}': LayerNormalization needs ONNX opset >= 17")
    ones = np.ones(node.shape[len(node.shape) - op.axes :])
    w.node("LayerNormalization", [xs[0], w.const(f"{name}.scale", ones)], out, axis=-op.axes, epsilon=op.eps)


def _export_sort(
    w: _Writer, node: Node, op: Sort, xs: list[str], in_shape: tuple[int, ...], out: str
) -> None:
    """Sort = TopK of the whole axis, sorted (how torch.sort exports); its indices are left unread."""
    k = w.const(f"{node.name}.k", np.array([in_shape[op.axis]]), np.int64)
    w.nodes.append(
        helper.make_node(
            "TopK",
            [xs[0], k],
            [out, w.fresh(f"{out}/indices")],
            name=w.fresh(f"{out}/TopK"),
            axis=op.axis + 1,
            largest=int(op.descending),
            sorted=1,
        )
    )


_Exporter = Callable[[_Writer, Node, Any, list[str], tuple[int, ...], str], object]

# One exporter per IR op class; `_export_op` looks the op's class (or the nearest base) up here.
_EXPORTERS: dict[type[Op], _Exporter] = {
    Linear: _export_linear,
    Conv: _export_conv,
    ConvTranspose: _export_conv_transpose,
    BatchNorm: _export_batchnorm,
    Affine: _export_affine,
    Activation: lambda w, node, op, xs, in_shape, out: export_activation(w, op, xs[0], out),
    MaxPool: _export_maxpool,
    AvgPool: _export_avgpool,
    GlobalAvgPool: lambda w, node, op, xs, in_shape, out: w.node("GlobalAveragePool", xs, out),
    Pad: _export_pad,
    Reshape: _export_reshape,
    Transpose: lambda w, node, op, xs, in_shape, out: w.node(
        "Transpose", xs, out, perm=[0, *(p + 1 for p in op.perm)]
    ),
    Add: lambda w, node, op, xs, in_shape, out: w.node("Add", xs, out),
    Concat: lambda w, node, op, xs, in_shape, out: w.node("Concat", xs, out, axis=op.axis + 1),
    Softmax: lambda w, node, op, xs, in_shape, out: w.node(
        "LogSoftmax" if op.log else "Softmax", xs, out, axis=-1
    ),
    Slice: _export_slice,
    Standardize: _export_standardize,
    Sort: _export_sort,
    Center: export_center,
    L2Pool: export_l2pool,
    Householder: export_householder,
    PRelu: lambda w, node, op, xs, in_shape, out: w.node(
        "PRelu", [xs[0], w.const(f"{node.name}.slope", op.slope)], out
    ),
    Extremum: lambda w, node, op, xs, in_shape, out: w.node("Max" if op.is_max else "Min", xs, out),
}


def _export_op(w: _Writer, node: Node, op: Op, xs: list[str], in_shape: tuple[int, ...], out: str) -> None:
    for cls in type(op).__mro__:
        exporter = _EXPORTERS.get(cls)
        if exporter is not None:
            exporter(w, node, op, xs, in_shape, out)
            return
    raise UnsupportedModelError(f"node '{node.name}': {op.describe()} cannot be exported to ONNX")


def graph_to_onnx(graph: Graph, opset: int = 17) -> onnx.ModelProto:
    """The ONNX model computing `graph` (float32 parameters, symbolic batch axis 'N')."""
    if not 13 <= opset <= 21:
        raise UsageError(f"ONNX export supports opsets 13-21, got {opset}")
    extra = graph.source.extra if graph.source is not None else {}
    in_name, out_name = extra.get("onnx_input", "input"), extra.get("onnx_output", "output")
    if in_name == out_name:
        out_name = out_name + "_out"
    w = _Writer(opset)
    w._names.update({in_name, out_name})
    tensor_of = {INPUT: in_name}
    for node in graph.nodes:
        out = out_name if node.name == graph.output else w.fresh(node.name)
        tensor_of[node.name] = out
        in_shape = graph.shape_of(node.inputs[0]) if node.inputs else ()
        _export_op(w, node, node.op, [tensor_of[i] for i in node.inputs], in_shape, out)
    if graph.output == INPUT:
        w.node("Identity", [in_name], out_name)
    x = helper.make_tensor_value_info(in_name, TensorProto.FLOAT, ["N", *graph.input_shape])
    y = helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", *graph.output_shape])
    g = helper.make_graph(w.nodes, "speccert", [x], [y], w.inits)
    ir_version = 8 if opset <= 17 else 9 if opset <= 20 else 10
    model = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version, producer_name="speccert"
    )
    if w.fixed:  # read back by the importer: the layers stay fixed (a bilinear upsampling's MatMuls)
        helper.set_model_props(model, {FIXED_METADATA: json.dumps(w.fixed)})
    onnx.checker.check_model(model)
    return model


def save_onnx(graph: Graph, path: str | os.PathLike[str], opset: int = 17) -> Path:
    """Write `graph` as an ONNX file (atomically: a temporary file renamed into place); return the path."""
    model = graph_to_onnx(graph, opset)
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{target} is a folder")
    tmp = target.with_name(target.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(target)
    return target
