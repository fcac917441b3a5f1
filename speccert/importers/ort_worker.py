"""onnxruntime's outputs for one input, in a process of their own (run by `ort_reference.py`).

Run as `python -P ort_worker.py MODEL`: reads one request frame from stdin (the input's name, the
first output is computed, the chunk size, and the input array), writes one reply frame to stdout (the
output array, or `{"error": one line}`) and exits, so that the session's memory (as much again as the
weights) returns to the system before the importer builds its own copy. Imports only numpy and
onnxruntime: no torch, nothing of speccert. Frames: 4-byte little-endian header length, a JSON header,
then `nbytes` raw bytes of a numeric array (no pickle).
"""

from __future__ import annotations

import json
import struct
import sys
from typing import IO, Any

import numpy as np

_KINDS = "fiub"  # numeric arrays only
_MAX_HEADER = 1 << 16


def read_frame(f: IO[bytes]) -> tuple[dict[str, Any], np.ndarray | None]:
    """One frame: the JSON header and, when it declares `nbytes`, the array it describes."""
    head = f.read(4)
    if len(head) != 4:
        raise ValueError("no frame")
    (n,) = struct.unpack("<I", head)
    if n > _MAX_HEADER:
        raise ValueError("bad frame header")
    header = json.loads(f.read(n).decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError("bad frame header")
    if "nbytes" not in header:
        return header, None
    dtype = np.dtype(str(header["dtype"]))
    shape = [int(d) for d in header["shape"]]
    nbytes = int(header["nbytes"])
    if (
        dtype.kind not in _KINDS
        or any(d < 0 for d in shape)
        or nbytes != int(np.prod(shape)) * dtype.itemsize
    ):
        raise ValueError("bad array header")
    data = f.read(nbytes)
    if len(data) != nbytes:
        raise ValueError("truncated array")
    return header, np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def write_frame(f: IO[bytes], header: dict[str, Any], array: np.ndarray | None = None) -> None:
    if array is not None:
        array = np.ascontiguousarray(array)
        header = {**header, "dtype": array.dtype.str, "shape": list(array.shape), "nbytes": array.nbytes}
    raw = json.dumps(header).encode("utf-8")
    f.write(struct.pack("<I", len(raw)) + raw)
    if array is not None:
        f.write(array.tobytes())
    f.flush()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _run(model: str, request: dict[str, Any], x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    # The reference is the model as written: no graph rewrites that could hide an importer bug.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    output = sess.get_outputs()[0].name
    chunk = int(request.get("batch") or x.shape[0])
    parts = [
        sess.run([output], {str(request["input"]): x[i : i + chunk]})[0] for i in range(0, x.shape[0], chunk)
    ]
    return np.concatenate(parts) if parts[0].ndim else parts[0]


def main(argv: list[str]) -> int:
    out = sys.stdout.buffer
    try:
        request, x = read_frame(sys.stdin.buffer)
    except (ValueError, KeyError, TypeError) as exc:
        write_frame(out, {"error": f"bad request: {_first_line(exc)}"})
        return 2
    if x is None:
        write_frame(out, {"error": "bad request: no input array"})
        return 2
    try:
        y = _run(argv[1], request, x)
    except Exception as exc:  # onnxruntime's own errors: reported as one line by the parent
        write_frame(out, {"error": _first_line(exc)})
        return 1
    write_frame(out, {}, np.asarray(y))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
