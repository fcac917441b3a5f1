"""Faithfulness of an ONNX import: the IR and onnxruntime must agree on seeded random inputs.

Agreement: max |ir - ort| <= RTOL * max(1, max |ort|) (NaN where both are NaN counts as equal). On a
mismatch the check reruns onnxruntime with every mapped intermediate tensor as an output and names the
first IR node that disagrees.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import torch

from speccert.errors import InputError, InternalError, SpeccertError
from speccert.importers.onnx_model import input_spec
from speccert.importers.onnx_safety import read_onnx
from speccert.importers.ort_reference import Reference, ReferenceRun
from speccert.ir.graph import Graph

RTOL = 2e-4
N_SAMPLES = 3
# Above this many parameters one random input is checked: onnxruntime's and the IR's forward passes
# dominate the load (vgg11_bn: 2.4 of its 7.4 CPU seconds for 3 inputs), and one input already meets
# every weight and, across its pixels, both sides of every branch (ReLU, Sort, Householder).
BIG_MODEL_PARAMETERS = 10_000_000

_NP_DTYPES = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16,
}


def _max_error(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(max abs difference, tolerance) with NaN/Inf at the same places counted as equal."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    same = (a64 == b64) | (np.isnan(a64) & np.isnan(b64))
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf where both have Inf: masked by `same`
        diff = np.where(same, 0.0, np.abs(a64 - b64))
    diff = np.where(np.isnan(diff), np.inf, diff)
    finite = np.abs(b64[np.isfinite(b64)])
    scale = max(1.0, float(finite.max()) if finite.size else 1.0)
    return float(diff.max()) if diff.size else 0.0, RTOL * scale


def _run_ort(
    model: onnx.ModelProto | Path, input_name: str, x: np.ndarray, batch: int | None, outputs: list[str]
) -> list[np.ndarray]:
    """onnxruntime's outputs on `x`. A path is read by onnxruntime itself: no serialized copy of the
    weights next to the parsed one (read_onnx has already checked where its external data points)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    # The reference is the model as written: no graph rewrites that could hide an importer bug.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        source = str(model) if isinstance(model, Path) else model.SerializeToString()
        sess = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = str(exc).splitlines()[0]
        if "INVALID_GRAPH" in first or "INVALID_PROTOBUF" in first:  # the file breaks the ONNX spec
            raise InputError(f"onnxruntime rejects the model as invalid ONNX: {first}") from None
        raise InternalError(f"onnxruntime cannot run the model to check the import: {first}") from None
    chunk = batch or x.shape[0]
    parts = [sess.run(outputs, {input_name: x[i : i + chunk]}) for i in range(0, x.shape[0], chunk)]
    return [
        np.concatenate([p[k] for p in parts]) if parts[0][k].ndim else parts[0][k]
        for k in range(len(outputs))
    ]


def _inputs(
    model: onnx.ModelProto, input_name: str, shape: tuple[int, ...], batch: int | None, wanted: int, seed: int
) -> np.ndarray:
    """`wanted` seeded uniform [0, 1) inputs (a multiple of a fixed batch size) in the input's type."""
    elem = next(i.type.tensor_type.elem_type for i in model.graph.input if i.name == input_name)
    n = wanted if batch is None else max(batch, (wanted // batch) * batch)
    return np.random.default_rng(seed).random((n, *shape)).astype(_NP_DTYPES.get(elem, np.float32))


def reference_first(
    path: Path, model: onnx.ModelProto, input_shape: tuple[int, ...] | None, seed: int = 0
) -> ReferenceRun | None:
    """For a model of more than BIG_MODEL_PARAMETERS parameters (its initializers' entries), start
    onnxruntime on the check's one input in a child process, before the weights are read
    (ort_reference.py); None for smaller models, which the check runs in this process."""
    if sum(math.prod(t.dims) for t in model.graph.initializer) <= BIG_MODEL_PARAMETERS:
        return None
    try:
        input_name, shape, batch = input_spec(model, input_shape)
    except SpeccertError:  # the import reports it
        return None
    return ReferenceRun(path, input_name, _inputs(model, input_name, shape, batch, 1, seed), batch)


def check_faithful(
    path: Path,
    model: onnx.ModelProto,
    graph: Graph,
    input_name: str,
    batch: int | None,
    ir_to_onnx: dict[str, str],
    seed: int = 0,
    reference: Reference | None = None,
) -> float:
    """Compare `graph` with onnxruntime on N_SAMPLES uniform [0, 1) inputs (one for a model of more than
    BIG_MODEL_PARAMETERS parameters); return the max error.

    `model` is the file's structure (its initializers may be stripped); onnxruntime runs the file at
    `path`, or `reference` (from `reference_first`) already holds its output. `batch` is the model's fixed
    batch size (inputs are fed in chunks of it) or None when symbolic."""
    out_name = model.graph.output[0].name
    if (
        reference is not None
        and reference.input_name == input_name
        and reference.x.shape[1:] == tuple(graph.input_shape)
    ):
        if reference.error is not None:
            raise InternalError(f"onnxruntime cannot run the model to check the import: {reference.error}")
        x, ref = reference.x, reference.y
    else:
        params = sum(t.numel() for node in graph.nodes for t in node.op.parameters().values())
        wanted = 1 if params > BIG_MODEL_PARAMETERS else N_SAMPLES
        x = _inputs(model, input_name, tuple(graph.input_shape), batch, wanted, seed)
        (ref,) = _run_ort(path, input_name, x, batch, [out_name])
    assert ref is not None
    with torch.no_grad():
        acts = graph.activations(torch.from_numpy(x.astype(np.float32)).to(graph.dtype))
    got = acts[graph.output].double().numpy()
    if got.size != ref.size:
        raise InternalError(
            f"import is not faithful: output has {got.size} values, onnxruntime gives {ref.size}"
        )
    err, tol = _max_error(got.reshape(ref.shape), ref)
    if err <= tol:
        return err
    _localise(read_onnx(path), graph, input_name, x, batch, acts, ir_to_onnx)
    raise InternalError(
        f"import is not faithful: output '{out_name}' differs from onnxruntime by {err:.3g} "
        f"(tolerance {tol:.3g})"
    )


def _localise(
    model: onnx.ModelProto,
    graph: Graph,
    input_name: str,
    x: np.ndarray,
    batch: int | None,
    acts: dict[str, torch.Tensor],
    ir_to_onnx: dict[str, str],
) -> None:
    """Raise InternalError naming the first IR node whose ONNX tensor disagrees (if one is found)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    names = [(n.name, ir_to_onnx[n.name]) for n in graph.nodes if n.name in ir_to_onnx]
    for _, t in names:
        if t not in known:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
            known.add(t)
    try:
        values = _run_ort(probe, input_name, x, batch, [t for _, t in names])
    except Exception:
        return
    for (ir, t), ref in zip(names, values, strict=True):
        got = acts[ir].double().numpy()
        if got.size != ref.size:
            raise InternalError(
                f"import is not faithful at node '{ir}' (ONNX tensor '{t}'): shape "
                f"{list(got.shape)} vs onnxruntime {list(ref.shape)}"
            )
        err, tol = _max_error(got.reshape(ref.shape), ref)
        if err > tol:
            raise InternalError(
                f"import is not faithful at node '{ir}' (ONNX tensor '{t}'): differs from "
                f"onnxruntime by {err:.3g} (tolerance {tol:.3g})"
            )
