"""`certify(graph, data, eps)`: certified L2 radii and certified accuracy of a classifier on data.

    >>> report = certify(speccert.load("models/mlp.onnx"), "models/data/fashion_mnist_test_1k.npz",
    ...                  eps=[0.1, 0.25, 0.5])            # doctest: +SKIP
    >>> report.certified_accuracies, report.to_dict()["certificate"]["median_radius"]  # doctest: +SKIP

How it runs is one frozen `CertifyOptions` (speccert.bounds.options), passed unchanged by the CLI, the
gate, fine-tuning's evaluator and bench. Steps: refuse unsupported/NaN models; prepend the --mean/--std normalisation (part of the certified
function: radii are in the data space); drop a final softmax; bound every layer (speccert.norms) and
compose (speccert.bounds.lipschitz); run each certificate kind (speccert.bounds.certificate registry)
on every sample in float64 on the folded graph (speccert.bounds.sample_pass); keep the best radius per sample. A sample is certified
at eps when it is correctly classified and its radius is >= eps. Optionally audit with PGD-L2
(any success raises InternalError) and measure an empirical lower bound on the Lipschitz constant.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import speccert
from speccert.bounds.audit import pgd_l2
from speccert.bounds.certificate import (
    NotApplicable,
)
from speccert.bounds.certificates.pairwise_margin import final_linear
from speccert.bounds.certify_result import AuditSummary, CertifyReport
from speccert.bounds.empirical import empirical_lipschitz
from speccert.bounds.layer_rows import layer_rows
from speccert.bounds.lipschitz import LipschitzBound, check_certifiable, lipschitz_bound
from speccert.bounds.options import CertifyOptions, options_from
from speccert.bounds.sample_pass import Progress, Samples, certify_samples, check_kinds
from speccert.data import Dataset, fit_to_model, load_data, make_dataset
from speccert.errors import InternalError, UsageError
from speccert.ir import Graph
from speccert.ir.decision import decision_of
from speccert.limits import human, plan_budget

Tensor = torch.Tensor
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


def plain_inference_seconds(graph: Graph, x: np.ndarray, batch_size: int, device: torch.device) -> float:
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
    options: CertifyOptions | None = None,
    *,
    limit: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    split: str = "test",
    progress: Progress | None = None,
    **overrides: Any,
) -> CertifyReport:
    """Certify `graph` on `data` (a path, a Dataset or (x, y) arrays); returns a CertifyReport.

    How: `options` (a CertifyOptions; default CertifyOptions()), or any of its fields as keywords
    (`certify(g, data, method="fft", second_order=True)`), which override it.

    radius(x) = max over certificate kinds of min_j r_kind(x, j) (0 if misclassified), with
    global r = (f_y - f_j) / (sqrt(2) L), pairwise r = (f_y - f_j) / (||W_y - W_j|| L_penultimate),
    second order (smooth nets, `second_order=True`) r = 2 m / (g + sqrt(g^2 + 2 K m)), refined by the
    CRC dual bound with `crc_steps` gradient steps per test (speccert.bounds.crc) when > 0,
    margin-aware r = (f_y - f_j) / (||T_y - T_j|| L_u) with T the merged affine tail
    (speccert.bounds.certificates.margin_aware) and, opt-in, the local certificate over B(x, r)
    (speccert.bounds.certificates.local). `certificates` names the kinds to run (or ["all"]); None runs every kind
    that is not opt-in.
    certified_accuracy(eps) = mean(correct and radius >= eps). `audit=N` attacks N certified points at
    their radius with PGD-L2 and raises InternalError on any success.
    """
    t_start = time.perf_counter()
    opts = options_from(options, overrides, "certify")
    eps_list = _check_eps(eps)
    opts.validate()
    check_kinds(opts.certificates)
    dev = torch.device(opts.device)
    ds = _as_dataset(data, split, limit)

    # Cheap checks first: unsupported operators, NaN weights, the output and the data's fit.
    check_certifiable(graph)
    n_classes = _classifier_classes(graph)
    ds = fit_to_model(ds, graph.input_shape, n_classes)

    t0 = time.perf_counter()
    bound = _bound(graph, opts, dev, mean, std, progress)
    timing = {"norms_s": time.perf_counter() - t0}
    notes = list(bound.notes) + _normalised_twice(ds, mean)
    folded = bound.folded.to(dev, torch.float64)
    opts = _within_memory(folded, opts, len(ds), notes)
    samples = certify_samples(bound, folded, ds, opts, dev, notes, progress, eps_list)
    timing["certify_s"] = samples.seconds
    timing["float64_share"] = samples.float64_share
    lower = _lower_bound(bound, folded, ds, opts, dev, timing, progress) if opts.lower_bound else None
    audit_summary = None
    if opts.audit > 0:
        t0 = time.perf_counter()
        found = _audit(folded, ds, samples.radius, opts, dev, progress)
        audit_summary = dataclasses.replace(found, seconds=time.perf_counter() - t0)
        timing["audit_s"] = audit_summary.seconds
    _finish_timing(timing, graph, ds, opts, dev, t_start)
    return _report(graph, ds, bound, opts, eps_list, samples, lower, timing, notes, audit_summary, mean, std)


def _bound(
    graph: Graph,
    opts: CertifyOptions,
    dev: torch.device,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    progress: Progress | None,
) -> LipschitzBound:
    def norms_progress(i: int, total: int, name: str) -> None:
        if progress is not None:
            progress("bounding layers", i, total)

    return lipschitz_bound(
        graph,
        opts.method,
        dev,
        mean=list(mean) if mean is not None else None,
        std=list(std) if std is not None else None,
        exact_max_dim=opts.exact_max_dim,
        progress=norms_progress,
        refine_above=opts.refine_above,
    )


# Bytes per sample, in units of one float64 copy of every activation: the per-sample pass keeps them
# all (the rounding allowance takes a norm of each) plus transients; the lower bound's backward passes
# keep them for autograd, twice (f(x + d) and f(x - d)), with their gradients.
_PASS_COPIES, _LOWER_COPIES = 2, 6


def _activation_bytes(graph: Graph) -> int:
    """float64 bytes of one sample's input and every node's output."""
    return 8 * (math.prod(graph.input_shape) + sum(math.prod(n.shape) for n in graph.nodes))


def _normalised_twice(ds: Dataset, mean: Sequence[float] | None) -> list[str]:
    """A note where --mean/--std are given for data that already has negative values: pixels are >= 0,
    so the data was probably normalised already (a corpus file, a saved tensor) and is now normalised
    twice: the model sees other inputs than it was trained on, and accuracy and radii are of those."""
    if mean is None or len(ds) == 0:
        return []
    low = float(ds.x.min())
    if low >= 0:
        return []
    return [
        f"a mean/std normalisation is given for data that already has negative values (min {low:.3g}): "
        "if the data is normalised already, leave mean/std out (they are applied again, before the model)"
    ]


def _within_memory(folded: Graph, opts: CertifyOptions, n: int, notes: list[str]) -> CertifyOptions:
    """`opts` with the batch size and the lower bound's points per pass lowered so that one pass plans
    at most `plan_budget()` (a 224x224 VGG keeps ~0.1 GB of float64 activations per sample)."""
    per_sample = _activation_bytes(folded)
    budget = plan_budget()
    batch = max(1, budget // (_PASS_COPIES * per_sample))
    if batch < min(opts.batch_size, n):  # it changes how the data is cut: say so
        notes.append(
            f"batch size {opts.batch_size} -> {batch}: {human(per_sample)} of activations per sample, "
            f"memory budget {human(budget)} (--max-memory)"
        )
    return opts.replace(batch_size=batch) if batch < opts.batch_size else opts


def _lower_chunk(folded: Graph) -> int:
    """Points per pass of the empirical lower bound within `plan_budget()`."""
    return max(1, plan_budget() // (_LOWER_COPIES * _activation_bytes(folded)))


def _lower_bound(
    bound: LipschitzBound,
    folded: Graph,
    ds: Dataset,
    opts: CertifyOptions,
    dev: torch.device,
    timing: dict[str, float],
    progress: Progress | None,
) -> float:
    """An empirical lower bound on L (max ||J(x) v||); above the proven upper bound is a bug."""
    t0 = time.perf_counter()
    if progress is not None:
        progress("lower bound", 0, 1)
    xs = torch.from_numpy(ds.x[: min(len(ds), opts.lower_points)]).to(device=dev, dtype=torch.float64)
    chunk = _lower_chunk(folded)  # all points in one pass unless that would exceed the memory budget
    lower = max(
        (empirical_lipschitz(folded, xs[i : i + chunk], seed=opts.seed) for i in range(0, len(xs), chunk)),
        default=0.0,
    )
    timing["lower_bound_s"] = time.perf_counter() - t0
    if lower > bound.upper:
        raise InternalError(
            f"the measured Jacobian norm {lower:.6g} exceeds the proven Lipschitz bound "
            f"{bound.upper:.6g}: a norm bound is wrong"
        )
    return lower


def _finish_timing(
    timing: dict[str, float],
    graph: Graph,
    ds: Dataset,
    opts: CertifyOptions,
    dev: torch.device,
    t_start: float,
) -> None:
    n, t_cert = len(ds), timing["certify_s"]
    timing["inference_s"] = plain_inference_seconds(graph, ds.x, opts.batch_size, dev)
    timing["total_s"] = time.perf_counter() - t_start
    timing["certify_samples_per_s"] = n / t_cert if t_cert > 0 else 0.0
    timing["inference_samples_per_s"] = n / timing["inference_s"] if timing["inference_s"] > 0 else 0.0


def _report(
    graph: Graph,
    ds: Dataset,
    bound: LipschitzBound,
    opts: CertifyOptions,
    eps_list: list[float],
    samples: Samples,
    lower: float | None,
    timing: dict[str, float],
    notes: list[str],
    audit_summary: AuditSummary | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> CertifyReport:
    n = len(ds)
    data_info = {
        "path": ds.source,
        "split": ds.split,
        "n": n,
        "mean": list(map(float, mean)) if mean is not None else None,
        "std": list(map(float, std)) if std is not None else None,
    }
    extra: dict[str, Any] = {
        "lower_method": (
            f"max ||J(x) v|| (power iteration + ascent) over the first {min(n, opts.lower_points)} points"
        )
        if opts.lower_bound
        else None,
        "penultimate_upper": _penultimate(bound),
        "smooth": bound.curvature is not None,
    }
    return CertifyReport(
        _model_info(graph, bound),
        data_info,
        layer_rows(bound),
        bound.upper,
        lower,
        eps_list,
        ds.y,
        samples.preds,
        samples.margins,
        samples.radius,
        samples.kind(),
        samples.per_kind,
        samples.names,
        timing,
        _environment(opts),
        notes,
        audit_summary,
        extra,
        samples.untested,
    )


def _model_info(graph: Graph, bound: LipschitzBound) -> dict[str, Any]:
    src = graph.source
    return {
        "path": src.path if src else "",
        "sha256": src.sha256 if src else "",
        "format": src.format if src else "graph",
        "input_shape": list(graph.input_shape),
        "n_classes": graph.output_shape[0],
        "certified_output": bound.logits,
        "decision": decision_of(graph),
    }


def _environment(opts: CertifyOptions) -> dict[str, Any]:
    return {
        "speccert": speccert.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(torch.device(opts.device)),
        "method": opts.method,
        "seed": opts.seed,
        "dtype": "float64",
        "batch_size": opts.batch_size,
        "second_order": opts.second_order,
        "crc_steps": opts.crc_steps,
        "crown_steps": opts.crown_steps,
        "exact_max_dim": opts.exact_max_dim,
        "refine_above": opts.refine_above if math.isfinite(opts.refine_above) else None,  # None: never
        # "eps": the per-point kinds tested only the requested eps; radii are lower bounds, not searched
        "radius_search": opts.radius_search,
    }


def _penultimate(bound: LipschitzBound) -> float | None:
    try:
        _, u = final_linear(bound.folded)
    except NotApplicable:
        return None
    return bound.node_upper[u]


def _audit(
    folded: Graph,
    ds: Dataset,
    radius: np.ndarray,
    opts: CertifyOptions,
    dev: torch.device,
    progress: Progress | None,
) -> AuditSummary:
    """PGD-L2 at the certified radius of the first `opts.audit` certified points; any success raises."""
    idx = np.flatnonzero((radius > 0) & np.isfinite(radius))[: opts.audit]
    steps, restarts, batch_size = opts.audit_steps, opts.audit_restarts, opts.batch_size
    max_lead = float("-inf")
    for start in range(0, idx.size, batch_size):
        if progress is not None:
            progress("audit", start, idx.size)
        sel = idx[start : start + batch_size]
        xb = torch.from_numpy(ds.x[sel]).to(device=dev, dtype=torch.float64)
        yb = torch.from_numpy(ds.y[sel]).to(dev)
        rb = torch.from_numpy(radius[sel]).to(dev)
        res = pgd_l2(folded, xb, yb, rb, steps=steps, restarts=restarts, seed=opts.seed + start)
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
