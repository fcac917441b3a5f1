"""Reading ONNX files safely: clear errors for missing, corrupt or truncated files, and external-data
locations checked *before* any external file is opened (no absolute paths, nothing outside the model's
folder, no symlink escaping it). Every tensor's declared size (dims x element size) is checked against
the data it holds and against the memory budget (speccert.limits) before external data is read: onnx's
loader crashes the process on a multi-gigabyte external tensor instead of raising."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import onnx
from onnx import external_data_helper

from speccert.errors import InputError
from speccert.limits import check_bytes

# Element types whose raw bytes are not itemsize * count (packed 4-bit) or have no fixed size (string).
_NO_FIXED_SIZE = {onnx.TensorProto.STRING, 21, 22, 23}
_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data")


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor the graph holds: initializers and tensor attributes, in subgraphs too."""
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("g"):
                yield from _tensors(a.g)
            for g in a.graphs:
                yield from _tensors(g)


def check_external_data(model: onnx.ModelProto, base: Path) -> None:
    """Raise InputError if an external-data location is absolute, leaves `base`, or is missing."""
    root = base.resolve()
    for t in _tensors(model.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        if (
            not loc
            or os.path.isabs(loc)
            or Path(loc).is_absolute()
            or loc.startswith(("/", "\\"))
            or ":" in loc
        ):
            raise InputError(
                f"tensor '{t.name}': external data location {loc!r} must be a relative path "
                "inside the model's folder"
            )
        target = (root / loc).resolve()
        if not target.is_relative_to(root):
            raise InputError(
                f"tensor '{t.name}': external data location {loc!r} points outside the model's folder"
            )
        if not target.is_file():
            raise InputError(f"tensor '{t.name}': external data file {loc!r} not found next to the model")


def _declared_bytes(t: onnx.TensorProto) -> int:
    if any(d < 0 for d in t.dims):
        raise InputError(f"tensor '{t.name}' has negative dimensions {list(t.dims)}")
    if t.data_type in _NO_FIXED_SIZE or t.data_type == onnx.TensorProto.UNDEFINED:
        return 0
    try:
        size = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        raise InputError(f"tensor '{t.name}' has an unknown element type {t.data_type}") from None
    return int(math.prod(t.dims)) * int(size)


def check_tensor_sizes(model: onnx.ModelProto, preloaded: Mapping[str, int] | None = None) -> None:
    """Raise InputError for a tensor whose dims disagree with the data it holds (none at all, or a
    different count), or when the tensors together declare more than the memory budget.

    `preloaded`: graph initializers whose data was read elsewhere (onnx_lean.py), name -> bytes read;
    their dims are checked against that count instead."""
    total = 0
    n_inits = len(model.graph.initializer)
    for i, t in enumerate(_tensors(model.graph)):
        nbytes = _declared_bytes(t)
        total += nbytes
        n = math.prod(t.dims)
        if preloaded is not None and i < n_inits and t.name in preloaded:
            if preloaded[t.name] != nbytes:
                raise InputError(
                    f"tensor '{t.name}' declares dims {list(t.dims)} ({nbytes} bytes) but holds "
                    f"{preloaded[t.name]} bytes"
                )
            continue
        if t.data_location == onnx.TensorProto.EXTERNAL or t.data_type in _NO_FIXED_SIZE or n == 0:
            continue
        counts = [len(getattr(t, f)) for f in _TYPED_FIELDS if len(getattr(t, f))]
        raw = len(t.raw_data)  # read once: each access copies the bytes (0.4 GB for a VGG layer)
        if not raw and not counts:
            raise InputError(f"tensor '{t.name}' declares dims {list(t.dims)} but holds no data")
        per = 2 if t.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128) else 1
        if (raw and raw != nbytes) or (counts and counts[0] != n * per):
            held = raw if raw else counts[0]
            raise InputError(
                f"tensor '{t.name}' declares dims {list(t.dims)} ({nbytes} bytes) but holds "
                f"{held} {'bytes' if t.raw_data else 'values'}"
            )
    check_bytes("the model's tensors", total)


def external_tensor_count(model: onnx.ModelProto) -> int:
    """How many of the model's tensors (initializers, attributes, subgraphs) keep their data outside."""
    return sum(t.data_location == onnx.TensorProto.EXTERNAL for t in _tensors(model.graph))


def validate_onnx(model: onnx.ModelProto, p: Path, preloaded: Mapping[str, int] | None = None) -> None:
    """The checks `read_onnx` makes on a parsed model (before any external data is read)."""
    if model.ir_version <= 0 or not model.graph.node or not model.graph.output:
        raise InputError(
            f"{p}: not a readable ONNX model (no graph, nodes or outputs: truncated or corrupt?)"
        )
    check_external_data(model, p.parent)
    check_tensor_sizes(model, preloaded)


def read_onnx(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Parse an ONNX file, load its external data after checking where it points, and return it.

    Raises InputError (exit code 4) for a missing, unreadable, truncated or corrupt file."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"model file not found: {p}")
    if p.is_dir():
        raise InputError(f"model path is a folder, not a file: {p}")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, OSError, ...
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{p}: not a readable ONNX model (truncated or corrupt?): {first}") from None
    validate_onnx(model, p)
    if external_tensor_count(model):
        try:
            external_data_helper.load_external_data_for_model(model, str(p.parent))
        except Exception as exc:
            raise InputError(f"{p}: cannot read external data: {str(exc).splitlines()[0]}") from None
    return model
