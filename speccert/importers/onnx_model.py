"""What the ONNX importer reads from a parsed model before converting it, and how it lets go of it.

- `input_spec`: the one float input, its name, its sample shape (without the batch axis) and the
  declared batch size; `--input-shape` checked against it.
- `model_opset`: the default-domain opset, in the supported range.
- `without_weights`: copies of the structure without the initializers, so that the parsed file's
  arena (a second copy of every weight) can be freed once the weights are numpy arrays.
- `return_freed_memory`: hand freed heap pages back to the OS before the next big allocation.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import onnx

from speccert.errors import UnsupportedModelError, UsageError
from speccert.importers.onnx_ops import MAX_OPSET, MIN_OPSET


def input_spec(
    model: onnx.ModelProto, input_shape: tuple[int, ...] | None
) -> tuple[str, tuple[int, ...], int | None]:
    inits = {t.name for t in model.graph.initializer}
    ins = [i for i in model.graph.input if i.name not in inits]
    if len(ins) != 1:
        names = ", ".join(repr(i.name) for i in ins)
        raise UsageError(
            f"the model has {len(ins)} inputs ({names}); speccert certifies models with exactly one input"
        )
    inp = ins[0]
    tt = inp.type.tensor_type
    if tt.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
        raise UnsupportedModelError(
            f"input '{inp.name}' has element type "
            f"{onnx.TensorProto.DataType.Name(tt.elem_type)}; a float input is needed"
        )
    dims: list[int | None] = [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim
    ]
    shown = "[" + ", ".join(str(d) if d is not None else "?" for d in dims) + "]"
    if not tt.HasField("shape") or len(dims) < 2:
        raise UsageError(
            f"input '{inp.name}' has shape {shown}: a batch axis followed by the sample's axes is needed"
        )
    batch, rest = dims[0], dims[1:]
    if input_shape is not None:
        if len(input_shape) != len(rest) or any(
            d is not None and d != s for d, s in zip(rest, input_shape, strict=True)
        ):
            raise UsageError(
                f"--input-shape {','.join(map(str, input_shape))} does not match the model input "
                f"'{inp.name}' of shape {shown} (batch axis first, not part of --input-shape)"
            )
        return inp.name, tuple(input_shape), batch
    if any(d is None for d in rest):
        raise UsageError(
            f"model input '{inp.name}' has dynamic dimensions {shown}; pass --input-shape "
            "(without the batch axis)"
        )
    return inp.name, tuple(int(d) for d in rest if d is not None), batch


def without_weights(
    model: onnx.ModelProto, nodes: list[onnx.NodeProto]
) -> tuple[onnx.ModelProto, list[onnx.NodeProto]]:
    """Fresh copies of the model's structure and of `nodes`, without the initializers.

    A parsed ModelProto keeps every tensor's bytes in one arena until the last message taken from it is
    dropped; once the initializers are numpy arrays, that second copy of the weights (507 MB for
    VGG-11) is freed by dropping the parsed model and its nodes. The faithfulness check runs
    onnxruntime on the file itself."""
    copies = []
    for n in nodes:
        c = onnx.NodeProto()
        c.CopyFrom(n)
        copies.append(c)
    model.graph.ClearField("initializer")
    light = onnx.ModelProto()
    light.CopyFrom(model)
    return light, copies


def return_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc only; elsewhere a no-op).

    glibc keeps freed small and mid-sized blocks (the parsed protobuf's arena, the constants'
    arrays) in its heap, so the next big allocation (the IR's weights, onnxruntime's session) would
    stack on top of them in RSS: VGG-11 measured 1.6 GB instead of 1.1 GB before the check."""
    if sys.platform != "linux":
        return
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return


def model_opset(path: Path, model: onnx.ModelProto) -> int:
    """The model's default-domain opset, which must lie in the supported range."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UnsupportedModelError(
            f"{path}: ONNX opset {opset} is outside the supported {MIN_OPSET}-{MAX_OPSET}"
        )
    return opset


__all__ = ["input_spec", "model_opset", "return_freed_memory", "without_weights"]
