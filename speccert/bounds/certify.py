"""`certify(graph, data, eps)`: certified L2 radii and certified accuracy of a classifier on data.

    >>> report = certify(speccert.load("models/mlp.onnx"), "models/data/fashion_mnist_test_1k.npz",
    ...                  eps=[0.1, 0.25, 0.5])            # doctest: +SKIP
    >>> report.certified_accuracies, report.to_dict()["certificate"]["median_radius"]  # doctest: +SKIP

Steps: refuse unsupported/NaN models; prepend the --mean/--std normalisation (part of the certified
function: radii are in the data space); drop a final softmax; bound every layer (speccert.norms) and
compose (speccert.bounds.lipschitz); run each certificate kind (speccert.bounds.certificate registry)
on every sample in float64 on the folded graph; keep the best radius per sample. A sample is certified
at eps when it is correctly classified and its radius is >= eps. Optionally audit with PGD-L2
(any success raises InternalError) and measure an empirical lower bound on the Lipschitz constant.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import speccert
from speccert.bounds import global_margin, pairwise_margin  # noqa: F401 - registers the kinds
from speccert.bounds import second_order as _second_order  # noqa: F401
from speccert.bounds.audit import pgd_l2
from speccert.bounds.certificate import (
    CERTIFICATES,
    Batch,
    CertContext,
    Certificate,
    NotApplicable,
    finish_radius,
    safe_margins,
)
from speccert.bounds.empirical import empirical_lipschitz
from speccert.bounds.float_error import FLOAT32_UNIT, ErrorModel, ieee_float32
from speccert.bounds.lipschitz import LipschitzBound, check_certifiable, lipschitz_bound
from speccert.data import Dataset, fit_to_model, load_data, make_dataset
from speccert.errors import InternalError, UsageError
from speccert.ir import Graph
from speccert.ir.decision import decision_of
from speccert.report.certify_report import AuditSummary, CertifyReport, LayerRow

Tensor = torch.Tensor
Progress = Callable[[str, int, int], None]
FAST_TOLERANCE = 1e-4
DataLike = str | Path | Dataset | tuple[Any, Any]


def _as_dataset(data: DataLike, split: str, limit: int | None) -> Dataset:
    if isinstance(data, Dataset):
        return data.head(limit)
    if isinstance(data, tuple):
        x, y = (t.detach().cpu().numpy() if isinstance(t, Tensor) else np.asarray(t) for t in data)
        return make_dataset(x, y, "<arrays>").head(limit)
    return load_data(data, split, limit)


def _check_eps(eps: Sequence[float]) -> list[float]:
    out = [float(e) for e in eps]
    if any(not np.isfinite(e) or e < 0 for e in out):
        raise UsageError(f"--eps values must be finite and >= 0, got {out}")
    return out


def _classifier_classes(graph: Graph) -> int:
    shape = graph.output_shape
    if len(shape) != 1 or shape[0] < 2:
        raise UsageError(
            f"certify needs a classifier with a vector of >= 2 logits per sample; this model's "
            f"output has shape {list(shape)}"
        )
    return shape[0]


def _certificates(ctx: CertContext, second: bool, notes: list[str]) -> list[Certificate]:
    out: list[Certificate] = []
    for name, cls in CERTIFICATES.items():
        if name == "second_order" and not second:
            continue
        try:
            out.append(cls(ctx))
        except NotApplicable as why:
            notes.append(f"{name} certificate not used: {why}")
    return out


def _layer_rows(bound: LipschitzBound) -> list[LayerRow]:
    return [
        LayerRow(
            n.name,
            n.op,
            tuple(n.in_shape),
            tuple(n.out_shape),
            n.upper.value,
            n.lower.value if n.lower is not None else None,
            n.upper.method,
            n.seconds,
        )
        for n in bound.layers
    ]


def _plain_inference_seconds(graph: Graph, x: np.ndarray, batch_size: int, device: torch.device) -> float:
    """Seconds of a plain forward pass of the model (its own dtype) over the data: the baseline."""
    g = graph.to(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            g.forward(torch.from_numpy(x[i : i + batch_size]).to(device=device, dtype=graph.dtype))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def certify(
    graph: Graph,
    data: DataLike,
    eps: Sequence[float] = (0.1, 0.25, 0.5),
    *,
    method: str = "auto",
    device: str | torch.device = "cpu",
    second_order: bool = False,
    audit: int = 0,
    batch_size: int = 256,
    limit: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    split: str = "test",
    seed: int = 0,
    lower_bound: bool = True,
    audit_steps: int = 40,
    audit_restarts: int = 4,
    crc_steps: int = 0,
    lower_points: int = 64,
    exact_max_dim: int = 2048,
    progress: Progress | None = None,
) -> CertifyReport:
    """Certify `graph` on `data` (a path, a Dataset or (x, y) arrays); returns a CertifyReport.

    radius(x) = max over certificate kinds of min_j r_kind(x, j) (0 if misclassified), with
    global r = (f_y - f_j) / (sqrt(2) L), pairwise r = (f_y - f_j) / (||W_y - W_j|| L_penultimate),
    second order (smooth nets, `second_order=True`) r = 2 m / (g + sqrt(g^2 + 2 K m)), refined by the
    CRC dual bound with `crc_steps` gradient steps per test (speccert.bounds.crc) when > 0.
    certified_accuracy(eps) = mean(correct and radius >= eps). `audit=N` attacks N certified points at
    their radius with PGD-L2 and raises InternalError on any success.
    """
    t_start = time.perf_counter()
    eps_list = _check_eps(eps)
    if batch_size <= 0:
        raise UsageError(f"batch size must be positive, got {batch_size}")
    if audit < 0:
        raise UsageError(f"--audit must be >= 0, got {audit}")
    if lower_points < 1:
        raise UsageError(f"--lower-points must be >= 1, got {lower_points}")
    if crc_steps < 0 or (crc_steps > 0 and not second_order):
        raise UsageError(f"--crc-steps must be >= 0 and needs --second-order, got {crc_steps}")
    dev = torch.device(device)
    ds = _as_dataset(data, split, limit)

    # Cheap checks first: unsupported operators, NaN weights, the output and the data's fit.
    check_certifiable(graph)
    n_classes = _classifier_classes(graph)
    ds = fit_to_model(ds, graph.input_shape, n_classes)

    def norms_progress(i: int, total: int, name: str) -> None:
        if progress is not None:
            progress("bounding layers", i, total)

    t0 = time.perf_counter()
    bound = lipschitz_bound(
        graph,
        method,
        dev,
        mean=list(mean) if mean is not None else None,
        std=list(std) if std is not None else None,
        exact_max_dim=exact_max_dim,
        progress=norms_progress,
    )
    t_norms = time.perf_counter() - t0
    notes = list(bound.notes)

    folded = bound.folded.to(dev, torch.float64)
    ctx = CertContext(bound, folded, dev, crc_steps)
    certs = _certificates(ctx, second_order, notes)
    uppers = {n.name: n.upper for n in bound.layers}
    errors = ErrorModel(bound.folded, uppers)
    # float32 data and first-order certificates only: a float32 pass with a float32 error allowance,
    # float64 again only where that allowance is not negligible (see _fast_margins).
    fast = ds.x.dtype == np.float32 and not any(c.needs_grad for c in certs) and ieee_float32(dev)
    fast32 = (
        (bound.folded.to(dev, torch.float32), ErrorModel(bound.folded, uppers, unit=FLOAT32_UNIT))
        if fast
        else None
    )

    n = len(ds)
    labels = ds.y
    preds = np.zeros(n, dtype=np.int64)
    margins = np.zeros(n, dtype=np.float64)
    per_kind = {c.name: np.zeros(n, dtype=np.float64) for c in certs}
    t0 = time.perf_counter()
    for start in range(0, n, batch_size):
        if progress is not None:
            progress("certify", start, n)
        xnp = ds.x[start : start + batch_size]
        yb = torch.from_numpy(labels[start : start + batch_size]).to(dev)
        if fast32 is not None:
            xb = torch.from_numpy(xnp).to(device=dev)
            logits, m, redone = _fast_margins(fast32[0], fast32[1], folded, errors, xb, yb)
            if redone > 0.5:  # the float32 allowance is not negligible for this model: float64 from now on
                fast32 = None
        else:
            xb = torch.from_numpy(xnp).to(device=dev, dtype=torch.float64)
            logits, m = _margins64(folded, errors, xb, yb)
        batch = Batch(xb, yb, logits, m)
        pred = logits.argmax(1)
        correct = pred == yb
        sl = slice(start, start + xb.shape[0])
        preds[sl] = pred.cpu().numpy()
        margins[sl] = m.amin(1).cpu().numpy()
        for c in certs:
            r = finish_radius(c.radii(batch).amin(1))
            per_kind[c.name][sl] = torch.where(correct, r, torch.zeros_like(r)).cpu().numpy()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t_cert = time.perf_counter() - t0
    if progress is not None:
        progress("certify", n, n)

    names = [c.name for c in certs]
    stacked = np.stack([per_kind[k] for k in names]) if names else np.zeros((1, n))
    radius = stacked.max(0)
    kind = np.where(
        radius > 0, np.asarray(names, dtype=object)[stacked.argmax(0)] if names else "none", "none"
    )

    timing = {"norms_s": t_norms, "certify_s": t_cert}
    lower = None
    if lower_bound:
        t0 = time.perf_counter()
        if progress is not None:
            progress("lower bound", 0, 1)
        xs = torch.from_numpy(ds.x[: min(n, lower_points)]).to(device=dev, dtype=torch.float64)
        lower = empirical_lipschitz(folded, xs, seed=seed)
        timing["lower_bound_s"] = time.perf_counter() - t0
        if lower > bound.upper:
            raise InternalError(
                f"the measured Jacobian norm {lower:.6g} exceeds the proven Lipschitz bound "
                f"{bound.upper:.6g}: a norm bound is wrong"
            )

    audit_summary = None
    if audit > 0:
        t0 = time.perf_counter()
        audit_summary = _audit(
            folded, ds, radius, audit, batch_size, dev, audit_steps, audit_restarts, seed, progress
        )
        audit_summary = AuditSummary(
            audit_summary.points,
            audit_summary.restarts,
            audit_summary.steps,
            audit_summary.successes,
            audit_summary.max_lead,
            time.perf_counter() - t0,
        )
        timing["audit_s"] = audit_summary.seconds

    timing["inference_s"] = _plain_inference_seconds(graph, ds.x, batch_size, dev)
    timing["total_s"] = time.perf_counter() - t_start
    timing["certify_samples_per_s"] = n / t_cert if t_cert > 0 else 0.0
    timing["inference_samples_per_s"] = n / timing["inference_s"] if timing["inference_s"] > 0 else 0.0

    src = graph.source
    model = {
        "path": src.path if src else "",
        "sha256": src.sha256 if src else "",
        "format": src.format if src else "graph",
        "input_shape": list(graph.input_shape),
        "n_classes": n_classes,
        "certified_output": bound.logits,
        "decision": decision_of(graph),
    }
    data_info = {
        "path": ds.source,
        "split": ds.split,
        "n": n,
        "mean": list(map(float, mean)) if mean is not None else None,
        "std": list(map(float, std)) if std is not None else None,
    }
    env = {
        "speccert": speccert.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(dev),
        "method": method,
        "seed": seed,
        "dtype": "float64",
        "batch_size": batch_size,
        "second_order": second_order,
        "crc_steps": crc_steps,
        "exact_max_dim": exact_max_dim,
    }
    extra: dict[str, Any] = {
        "lower_method": (
            f"max ||J(x) v|| (power iteration + ascent) over the first {min(n, lower_points)} points"
        )
        if lower_bound
        else None,
        "penultimate_upper": _penultimate(bound),
        "smooth": bound.curvature is not None,
    }
    return CertifyReport(
        model,
        data_info,
        _layer_rows(bound),
        bound.upper,
        lower,
        eps_list,
        labels,
        preds,
        margins,
        radius,
        kind,
        per_kind,
        names,
        timing,
        env,
        notes,
        audit_summary,
        extra,
    )


def _margins64(folded: Graph, errors: ErrorModel, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(float64 logits, safe margins) at float64 points x."""
    with torch.no_grad():
        acts = folded.activations(x.to(torch.float64))
    logits = acts[folded.output]
    return logits, safe_margins(logits, y, errors.bound(acts))


def _fast_margins(
    folded32: Graph, errors32: ErrorModel, folded: Graph, errors: ErrorModel, x: Tensor, y: Tensor
) -> tuple[Tensor, Tensor, float]:
    """(logits, safe margins, fraction recomputed in float64) from a float32 forward pass (float32 points x), its error allowed for with the
    float32 unit roundoff (the float32 copy of the weights included). Where the allowance exceeds
    FAST_TOLERANCE times |raw margin| (near-ties, tiny margins) the point is recomputed in float64, so
    the fast path costs at most a relative FAST_TOLERANCE of margin, and never soundness."""
    with torch.no_grad(), torch.backends.nnpack.flags(enabled=False):
        acts = folded32.activations(x)
    logits = acts[folded32.output].to(torch.float64)
    allowance = errors32.bound(acts)
    del acts
    m = safe_margins(logits, y, allowance)
    raw = m.amin(1) + allowance
    redo = allowance > FAST_TOLERANCE * raw.abs()
    if bool(redo.any()):
        idx = redo.nonzero()[:, 0]
        l64, m64 = _margins64(folded, errors, x[idx], y[idx])
        logits, m = logits.index_copy(0, idx, l64), m.index_copy(0, idx, m64)
    return logits, m, float(redo.double().mean())


def _penultimate(bound: LipschitzBound) -> float | None:
    try:
        _, u = pairwise_margin.final_linear(bound.folded)
    except NotApplicable:
        return None
    return bound.node_upper[u]


def _audit(
    folded: Graph,
    ds: Dataset,
    radius: np.ndarray,
    n_points: int,
    batch_size: int,
    dev: torch.device,
    steps: int,
    restarts: int,
    seed: int,
    progress: Progress | None,
) -> AuditSummary:
    idx = np.flatnonzero((radius > 0) & np.isfinite(radius))[:n_points]
    max_lead = float("-inf")
    for start in range(0, idx.size, batch_size):
        if progress is not None:
            progress("audit", start, idx.size)
        sel = idx[start : start + batch_size]
        xb = torch.from_numpy(ds.x[sel]).to(device=dev, dtype=torch.float64)
        yb = torch.from_numpy(ds.y[sel]).to(dev)
        rb = torch.from_numpy(radius[sel]).to(dev)
        res = pgd_l2(folded, xb, yb, rb, steps=steps, restarts=restarts, seed=seed + start)
        max_lead = max(max_lead, float(res.lead.max()))
        if bool(res.success.any()):
            k = int(torch.nonzero(res.success)[0, 0])
            raise InternalError(
                f"audit: PGD found an adversarial example for sample {int(sel[k])} at L2 distance "
                f"{float(res.delta_norm[k]):.6g} inside its certified radius {float(rb[k]):.6g} "
                f"(wrong class ahead by {float(res.lead[k]):.3g}): a certificate is wrong"
            )
    if progress is not None:
        progress("audit", idx.size, idx.size)
    return AuditSummary(int(idx.size), restarts, steps, 0, max_lead if idx.size else None, 0.0)
