"""`speccert bench certify --throughput`: plain float32 inference, the certificate pass (float32 pass at
a tolerance, float64 where it cannot settle a point) and the float64-only certificate pass, side by
side on the same model and data, each the best of REPEATS runs (the machine may be shared)."""

from __future__ import annotations

import time
from typing import Any

from speccert.cli.common import out

REPEATS = 5


def bench_throughput_one(
    graph: Any, data: Any, device: str, limit: int | None, tolerance: float, min_points: int
) -> dict[str, Any]:
    """Samples/s of plain inference (graph.forward in its own dtype), of certify's per-sample pass at
    `tolerance` and of that pass in float64 alone (the bound is computed once, outside the timing);
    the share of points that needed float64, the largest relative radius loss against float64 alone,
    and p10/p50/p90 of proven float32 error over margin."""
    import torch

    from speccert.bounds import CertifyOptions
    from speccert.bounds.certify import plain_inference_seconds
    from speccert.bounds.lipschitz import lipschitz_bound
    from speccert.bounds.sample_pass import certify_samples
    from speccert.data import fit_to_model

    dev = torch.device(device)
    ds = fit_to_model(_repeated(data, limit, min_points), graph.input_shape, graph.output_shape[0])
    t0 = time.perf_counter()
    bound = lipschitz_bound(graph, "auto", dev)
    folded = bound.folded.to(dev, torch.float64)
    opts = CertifyOptions(device=device, float32_tolerance=tolerance)
    best = {k: float("inf") for k in ("inference", "certify", "float64", "float32")}
    ratios = None
    for _ in range(REPEATS):
        best["inference"] = min(best["inference"], plain_inference_seconds(graph, ds.x, opts.batch_size, dev))
        fast = certify_samples(bound, folded, ds, opts, dev, [], None)
        best["certify"] = min(best["certify"], fast.seconds)
        slow = certify_samples(bound, folded, ds, opts.replace(float32_tolerance=0.0), dev, [], None)
        best["float64"] = min(best["float64"], slow.seconds)
        if tolerance > 0:
            ratios, seconds = _float32_only(bound, ds, dev)
            best["float32"] = min(best["float32"], seconds)
    return {
        "n": len(ds),
        "clean_accuracy": float((slow.preds == ds.y).mean()),
        "float32_tolerance": tolerance,
        "seconds": time.perf_counter() - t0,
        **{f"{k}_samples_per_s": _ratio(len(ds), v) for k, v in best.items()},
        "throughput_vs_inference": _ratio(best["inference"], best["certify"]),
        "float64_throughput_vs_inference": _ratio(best["inference"], best["float64"]),
        "float32_only_throughput_vs_inference": _ratio(best["inference"], best["float32"]),
        "float64_share": fast.float64_share,
        "radius_loss_max": radius_loss(fast.radius, slow.radius),
        "float32_bound_over_margin": _quantiles(ratios),
    }


def _ratio(a: float, seconds: float) -> float | None:
    """a / seconds, None for a time not measured (inf) or too short to measure (0)."""
    return a / seconds if 0 < seconds < float("inf") else None


def _repeated(data: Any, limit: int | None, min_points: int) -> Any:
    """The data (a path) as a Dataset of its first `limit` points, repeated to at least `min_points`."""
    import numpy as np

    from speccert.data import load_data, make_dataset

    ds = load_data(data).head(limit)
    reps = max(1, -(-min_points // len(ds)))
    return make_dataset(np.concatenate([ds.x] * reps), np.concatenate([ds.y] * reps), ds.source)


def radius_loss(radius: Any, reference: Any) -> float:
    """max over points of (reference - radius) / reference where reference > 0 (0 if none is lower)."""
    import numpy as np

    ref = np.asarray(reference, dtype=np.float64)
    r = np.asarray(radius, dtype=np.float64)
    pos = (ref > 0) & np.isfinite(ref)
    return float(np.clip((ref[pos] - r[pos]) / ref[pos], 0.0, None).max()) if pos.any() else 0.0


def _float32_only(bound: Any, ds: Any, dev: Any) -> tuple[Any, float]:
    """(proven float32 error / margin per point correctly classified in float32, seconds): the float32
    pass with its allowance alone, as if every point settled (the ceiling of the float32 path); (None,
    inf) where the graph has no float32 rule or the device no IEEE float32 (certify stays in float64)."""
    from speccert.bounds.fast_pass import bound_over_margin
    from speccert.bounds.float32_error import Float32NotCovered
    from speccert.bounds.float_error import ieee_float32

    if not ieee_float32(dev):
        return None, float("inf")
    t0 = time.perf_counter()
    try:
        ratios = bound_over_margin(bound, ds.x, ds.y)
    except Float32NotCovered:
        return None, float("inf")
    return ratios, time.perf_counter() - t0


def _quantiles(ratios: Any) -> dict[str, float] | None:
    """p10/p50/p90 of the ratios (None without any)."""
    import numpy as np

    if ratios is None or ratios.size == 0:
        return None
    return {f"p{q}": float(np.quantile(ratios, q / 100)) for q in (10, 50, 90)}


def _quantile_cell(q: dict[str, float] | None) -> str:
    return "-" if q is None else f"{q['p10']:.2g} {q['p50']:.2g} {q['p90']:.2g}"


def _loss_cell(loss: float) -> str:
    """Below 1e-9 the two passes differ only by float64 roundoff (batch composition and the thread count
    change BLAS blocking), not by the float32 pass: one cell for that, 0 included, so the table reads the
    same on every machine (the JSON keeps the number)."""
    return "<1e-9" if loss < 1e-9 else f"{loss:.2g}"


def _throughput_cell(r: dict[str, Any]) -> str:
    """ "0.47x (f64 0.24x, f32 0.85x)": the certificate pass over plain inference, then the float64-only
    pass's and the float32 pass's alone (every point settled: the float32 path's ceiling)."""
    if r["throughput_vs_inference"] is None:
        return "-"
    extra = [
        f"{name} {r[key]:.2f}x"
        for name, key in (
            ("f64", "float64_throughput_vs_inference"),
            ("f32", "float32_only_throughput_vs_inference"),
        )
        if r[key] is not None and r["float32_tolerance"] > 0
    ]
    return f"{r['throughput_vs_inference']:.2f}x" + (f" ({', '.join(extra)})" if extra else "")


def render_throughput(models: dict[str, dict[str, Any]]) -> None:
    from rich.table import Table

    t = Table(
        title="certify throughput: certificate pass / plain float32 inference, best of 5 (float64 alone: "
        "f64; float32 pass alone, as if every point settled: f32); bound/margin: proven float32 error over margin, p10 p50 p90; f64 share: points whose "
        "margins needed float64; radius loss: largest relative loss against float64 alone"
    )
    for c in ("model", "n", "clean", "bound/margin", "f64 share", "radius loss", "s", "throughput"):
        t.add_column(c, justify="left" if c == "model" else "right")
    for name, r in models.items():
        t.add_row(
            name,
            str(r["n"]),
            f"{r['clean_accuracy']:.1%}",
            _quantile_cell(r["float32_bound_over_margin"]),
            f"{r['float64_share']:.1%}",
            _loss_cell(r["radius_loss_max"]),
            f"{r['seconds']:.2f}",
            _throughput_cell(r),
        )
    out.print(t)
