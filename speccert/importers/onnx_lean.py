"""Reading an ONNX file without a second copy of its weights.

`onnx.load` holds the file's bytes and the parsed message together (twice the weights), and every
`raw_data` access copies the bytes once more. Here the file is walked at the protobuf wire level
instead: the model is re-encoded without the `raw_data` of its big initializers (the structure, a few
kilobytes, is parsed by onnx as usual) and each of those initializers is read from the file straight
into its own numpy array. The parent keeps one copy of the weights.

Wire format (protobuf encoding): a message is a sequence of fields, each a varint tag
(field number << 3 | wire type) then a varint (type 0), 8 bytes (1), 4 bytes (5), or a varint length
and that many bytes (2: sub-messages, strings, bytes, packed arrays). Only three fields are looked
into: ModelProto.graph (7), GraphProto.initializer (5) and TensorProto.raw_data (9); every other field
is copied byte for byte. An initializer stored as external data (torch's dynamo exporter writes them)
is read from its file once `validate_onnx` has checked where it points. Anything unexpected (a group, a
length past its message, `raw_data` twice, an element type without a fixed size, external data outside
the initializers) makes the caller fall back to `read_onnx`, whose errors are the ones users see. The values are the file's bytes, little-endian as ONNX stores them,
and the faithfulness check compares the converted graph with onnxruntime reading the file itself.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable
from io import BufferedReader
from pathlib import Path

import numpy as np
import onnx

from speccert.importers.onnx_ops.pattern import SMALL
from speccert.importers.onnx_safety import external_tensor_count, read_onnx, validate_onnx

_GRAPH, _INITIALIZER, _RAW_DATA = 7, 5, 9
# Initializers whose raw_data is at least this long are read into arrays directly; smaller ones stay
# in the parsed structure (fusions read small constants from it, onnx_ops/pattern.py).
BIG_RAW_BYTES = 1 << 18
_DTYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "<f4",
    onnx.TensorProto.DOUBLE: "<f8",
    onnx.TensorProto.FLOAT16: "<f2",
    onnx.TensorProto.INT64: "<i8",
    onnx.TensorProto.INT32: "<i4",
    onnx.TensorProto.INT16: "<i2",
    onnx.TensorProto.INT8: "i1",
    onnx.TensorProto.UINT8: "u1",
}


class _Malformed(Exception):
    """The file is not what the lean reader handles; read_onnx takes over (and reports)."""


class _Wire:
    """Fields of a protobuf message stored in a file, read without loading length-delimited payloads."""

    def __init__(self, f: BufferedReader) -> None:
        self.f = f

    def _varint(self, pos: int, end: int) -> tuple[int, int]:
        self.f.seek(pos)
        chunk = self.f.read(min(10, end - pos))
        value = 0
        for i, byte in enumerate(chunk):
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                return value, pos + i + 1
        raise _Malformed

    def fields(self, start: int, end: int) -> list[tuple[int, int, int, int]]:
        """(field number, field start, payload start, field end) of each field in [start, end)."""
        out = []
        pos = start
        while pos < end:
            tag, p = self._varint(pos, end)
            field, wire = tag >> 3, tag & 7
            if wire == 0:
                _, q = self._varint(p, end)
                ps = p
            elif wire in (1, 5):
                ps, q = p, p + (8 if wire == 1 else 4)
            elif wire == 2:
                length, ps = self._varint(p, end)
                q = ps + length
            else:  # groups (3, 4) and invalid wire types
                raise _Malformed
            if field == 0 or q > end:
                raise _Malformed
            out.append((field if wire == 2 else -field, pos, ps, q))
            pos = q
        return out

    def span(self, start: int, end: int) -> bytes:
        self.f.seek(start)
        data = self.f.read(end - start)
        if len(data) != end - start:
            raise _Malformed
        return data


def _encode(field: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    out = bytearray()
    for v in (field << 3 | 2, len(payload)):
        while v >= 0x80:
            out.append(v & 0x7F | 0x80)
            v >>= 7
        out.append(v)
    return bytes(out) + payload


def _tensor(w: _Wire, start: int, end: int, raws: list[tuple[int, int] | None]) -> bytes:
    fields = w.fields(start, end)
    raw = [(ps, q) for f, _, ps, q in fields if f == _RAW_DATA]
    if len(raw) != 1 or raw[0][1] - raw[0][0] < BIG_RAW_BYTES:
        raws.append(None)
        return w.span(start, end)
    raws.append(raw[0])
    return b"".join(w.span(s, q) for f, s, _, q in fields if f != _RAW_DATA)


def _graph(w: _Wire, start: int, end: int, raws: list[tuple[int, int] | None]) -> bytes:
    return b"".join(
        _encode(f, _tensor(w, ps, q, raws)) if f == _INITIALIZER else w.span(s, q)
        for f, s, ps, q in w.fields(start, end)
    )


def _structure(f: BufferedReader, size: int) -> tuple[bytes, list[tuple[int, int] | None]]:
    """The model re-encoded without big raw_data, and per initializer (file order) its raw_data span."""
    w = _Wire(f)
    raws: list[tuple[int, int] | None] = []
    model = b"".join(
        _encode(f, _graph(w, ps, q, raws)) if f == _GRAPH else w.span(s, q)
        for f, s, ps, q in w.fields(0, size)
    )
    return model, raws


def _read_array(f: BufferedReader, offset: int, length: int, dtype: np.dtype, dims: list[int]) -> np.ndarray:
    arr = np.empty(length // dtype.itemsize, dtype=dtype)
    view = arr.view(np.uint8).data
    f.seek(offset)
    got = 0
    while got < length:
        n = f.readinto(view[got:])
        if not n:
            raise _Malformed
        got += n
    out = arr.reshape(dims)
    return out if out.dtype.isnative else out.astype(out.dtype.newbyteorder("="))


def _span(t: onnx.TensorProto, raw: tuple[int, int] | None) -> tuple[str, int, int, np.dtype, list[int]]:
    """Where initializer `t`'s bytes are: (external file or "" for the model file, offset, byte count,
    element type, dims); _Malformed for anything but one plain raw_data or one external span."""
    dtype = np.dtype(_DTYPES.get(t.data_type, "V"))
    nbytes = math.prod(t.dims) * dtype.itemsize
    if dtype.kind == "V" or t.HasField("segment") or any(d < 0 for d in t.dims):
        raise _Malformed
    info = {e.key: e.value for e in t.external_data}
    if t.data_location == onnx.TensorProto.EXTERNAL:
        if raw is not None or not info.get("location") or int(info.get("length", nbytes)) != nbytes:
            raise _Malformed
        return info["location"], int(info.get("offset", 0)), nbytes, dtype, list(t.dims)
    if raw is None or info or t.data_location != onnx.TensorProto.DEFAULT or nbytes != raw[1] - raw[0]:
        raise _Malformed
    return "", raw[0], nbytes, dtype, list(t.dims)


def _lean(
    p: Path, before_weights: Callable[[onnx.ModelProto], None] | None
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    with p.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        structure, raws = _structure(f, size)
        try:
            model = onnx.ModelProto.FromString(structure)
        except Exception:  # protobuf DecodeError: read_onnx says what is wrong
            raise _Malformed from None
        inits = list(model.graph.initializer)
        names = Counter(t.name for t in inits)
        if len(inits) != len(raws):
            raise _Malformed
        spans: dict[str, tuple[str, int, int, np.dtype, list[int]]] = {}  # name: (file, offset, bytes, ...)
        for t, raw in zip(inits, raws, strict=True):
            if raw is not None or t.data_location == onnx.TensorProto.EXTERNAL:
                if names[t.name] != 1:
                    raise _Malformed
                spans[t.name] = _span(t, raw)
        if external_tensor_count(model) != sum(1 for s in spans.values() if s[0]):
            raise _Malformed  # external data outside the initializers: read_onnx loads it
        # where external data points is checked here, before any of it is opened
        validate_onnx(model, p, preloaded={n: s[2] for n, s in spans.items()})
        if before_weights is not None:
            before_weights(model)
        arrays = {}
        for n, (loc, off, nbytes, dtype, dims) in spans.items():
            if not loc:
                arrays[n] = _read_array(f, off, nbytes, dtype, dims)
                continue
            with (p.parent / loc).open("rb") as ext:
                if off < 0 or off + nbytes > os.fstat(ext.fileno()).st_size:
                    raise _Malformed
                arrays[n] = _read_array(ext, off, nbytes, dtype, dims)
    for t in model.graph.initializer:  # the structure as read_onnx leaves it: no external references
        if t.name in arrays:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                t.ClearField("data_location")
                del t.external_data[:]
            if math.prod(t.dims) <= SMALL:  # fusions read small constants from the structure
                t.raw_data = arrays.pop(t.name).astype(np.dtype(_DTYPES[t.data_type])).tobytes()
    return model, arrays


def read_onnx_lean(
    path: str | os.PathLike[str], before_weights: Callable[[onnx.ModelProto], None] | None = None
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The parsed model, its initializers of more than `onnx_ops.pattern.SMALL` entries without data,
    and those initializers as arrays (smaller ones keep their bytes in the structure).

    Same checks and errors as `read_onnx` (which it falls back to for files it does not handle, with
    no arrays); the arrays hold exactly the file's values. `before_weights` is called with the
    checked structure before any weight is read (not on the fallback).

    >>> model, arrays = read_onnx_lean("models/mlp.onnx")           # doctest: +SKIP
    """
    p = Path(path)
    try:
        if p.is_file():
            return _lean(p, before_weights)
    except (_Malformed, OSError, ValueError):  # ValueError: an external-data offset that is no number
        pass
    return read_onnx(p), {}


__all__ = ["BIG_RAW_BYTES", "read_onnx_lean"]
