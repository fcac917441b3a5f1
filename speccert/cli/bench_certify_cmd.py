"""`speccert bench certify`: certify figures and throughput per model, bundled and corpus."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from speccert.cli.bench_corpus import REPO, corpus_folder, missing_corpus_note
from speccert.cli.common import DeviceOpt, JsonOpt, check_outputs, err, out, resolve_device, write_json

BUNDLED_DATA = REPO / "models" / "data" / "fashion_mnist_test_1k.npz"

CorpusOpt = Annotated[
    Path | None,
    typer.Option(
        "--corpus",
        help="Folder of VNN-COMP models (<name>/model.onnx "
        "with x.npy, y.npy); default ../shared/onnx-corpus.",
    ),
]
BundledOpt = Annotated[
    bool,
    typer.Option(
        "--bundled/--no-bundled",
        help="Include the models in models/ on models/data/fashion_mnist_test_1k.npz.",
        metavar="",
    ),
]
EpsOpt = Annotated[
    str,
    typer.Option("--eps", help="Comma-separated radii for the corpus (each model's own input space)."),
]
BundledEpsOpt = Annotated[str, typer.Option("--bundled-eps", help="Radii for the bundled models.")]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="At most N samples per model.")]
MinPointsOpt = Annotated[
    int,
    typer.Option(
        "--min-points",
        help="Repeat a model's points up to at least N (timings of the small corpus sets are otherwise "
        "milliseconds); percentages are unchanged, n counts the repeats.",
    ),
]
ThroughputOpt = Annotated[
    bool,
    typer.Option("--throughput", help="Show only the throughput table (f64 share, radius loss, speed)."),
]
ToleranceOpt = Annotated[
    float,
    typer.Option(
        "--float32-tolerance",
        help="Relative radius loss the float32 pass may cost (points it cannot settle within it are "
        "redone in float64); 0 = float64 only. Each model is also certified in float64 alone, side by side.",
    ),
]


def _bundled_models() -> list[str]:
    """The zoo's trained models, as listed in models/manifest.json (none in an installed package)."""
    import json

    manifest = REPO / "models" / "manifest.json"
    return sorted(json.loads(manifest.read_text())["models"]) if manifest.exists() else []


def bench_certify_one(
    graph: Any,
    data: Any,
    eps: list[float],
    device: str,
    limit: int | None,
    tolerance: float = 1e-6,
    min_points: int = 0,
) -> dict[str, Any]:
    """One certify() run: the figures issue 4 asks for, with the certify-vs-plain-inference throughput;
    with `tolerance` > 0 also a float64-only run (no lower bound) for its throughput and the largest
    relative radius loss of the float32 pass against it."""
    from speccert.bounds import CertifyOptions, certify

    t0 = time.perf_counter()
    opts = CertifyOptions(device=device, float32_tolerance=tolerance)
    data = _repeated(data, limit, min_points)
    limit = None
    rep = certify(graph, data, eps, opts, limit=limit)
    seconds = time.perf_counter() - t0
    t = rep.timing
    slow = (
        certify(graph, data, eps, opts.replace(float32_tolerance=0.0, lower_bound=False), limit=limit)
        if tolerance > 0
        else rep
    )
    return {
        "n": rep.n,
        "lipschitz_upper": rep.lipschitz_upper,
        "lipschitz_lower": rep.lipschitz_lower,
        "ratio": rep.lipschitz_ratio,
        "clean_accuracy": rep.clean_accuracy,
        "eps": eps,
        "certified_accuracy": rep.certified_accuracies,
        "median_radius": rep.median_radius,
        "seconds": seconds,
        "norms_s": t["norms_s"],
        "certify_s": t["certify_s"],
        "inference_s": t["inference_s"],
        "throughput_vs_inference": _ratio(t),
        "float32_tolerance": tolerance,
        "float64_share": t["float64_share"],
        "float64_throughput_vs_inference": _ratio(slow.timing),
        "radius_loss_max": radius_loss(rep.radius, slow.radius),
        "float32_bound_over_margin": _bound_quantiles(graph, data) if tolerance > 0 else None,
    }


def _bound_quantiles(graph: Any, data: Any) -> dict[str, float] | None:
    """p10/p50/p90 over the correctly classified points of proven float32 error / margin (None where
    the graph has no float32 rule); the norms are bounded once more for it."""
    import numpy as np

    from speccert.bounds.fast_pass import bound_over_margin
    from speccert.bounds.float32_error import Float32NotCovered
    from speccert.bounds.lipschitz import lipschitz_bound
    from speccert.data import Dataset, fit_to_model

    ds = data if isinstance(data, Dataset) else _load(data)
    ds = fit_to_model(ds, graph.input_shape, graph.output_shape[0])
    try:
        ratios = bound_over_margin(lipschitz_bound(graph), ds.x, ds.y)
    except Float32NotCovered:
        return None
    if ratios.size == 0:
        return None
    return {f"p{q}": float(np.quantile(ratios, q / 100)) for q in (10, 50, 90)}


def _repeated(data: Any, limit: int | None, min_points: int) -> Any:
    """The data (a path) as a Dataset of its first `limit` points, repeated to at least `min_points`."""
    if min_points <= 0:
        return data if limit is None else _load(data).head(limit)
    import numpy as np

    from speccert.data import make_dataset

    ds = _load(data).head(limit)
    reps = -(-min_points // len(ds))
    return make_dataset(np.concatenate([ds.x] * reps), np.concatenate([ds.y] * reps), ds.source)


def _load(data: Any) -> Any:
    from speccert.data import load_data

    return load_data(data)


def _ratio(t: dict[str, float]) -> float | None:
    """Certificate pass samples/s over plain inference samples/s (None without an inference time)."""
    return (
        t["certify_samples_per_s"] / t["inference_samples_per_s"]
        if t["inference_samples_per_s"] > 0
        else None
    )


def radius_loss(radius: Any, reference: Any) -> float:
    """max over points of (reference - radius) / reference where reference > 0 (0 if none is lower)."""
    import numpy as np

    ref = np.asarray(reference, dtype=np.float64)
    r = np.asarray(radius, dtype=np.float64)
    pos = (ref > 0) & np.isfinite(ref)
    return float(np.clip((ref[pos] - r[pos]) / ref[pos], 0.0, None).max()) if pos.any() else 0.0


def _certify_jobs(
    corpus: Path | None, bundled: bool, eps: str, bundled_eps: str
) -> list[tuple[str, Path, Path, list[float]]]:
    """(name, model file, data, radii) of every model `bench certify` runs: the bundled, then the corpus's."""
    from speccert.cli.certify_cmd import parse_floats
    from speccert.errors import InputError

    jobs: list[tuple[str, Path, Path, list[float]]] = []
    if bundled and BUNDLED_DATA.exists():
        jobs += [
            (m, REPO / "models" / f"{m}.onnx", BUNDLED_DATA, parse_floats(bundled_eps, "--bundled-eps") or [])
            for m in _bundled_models()
            if (REPO / "models" / f"{m}.onnx").exists()
        ]
    folder = corpus_folder(corpus)
    if corpus is not None and not folder.is_dir():
        raise InputError(f"--corpus {corpus}: not a folder")
    if not folder.is_dir():
        missing_corpus_note(folder, f"running the {len(jobs)} bundled models only")
    if folder.is_dir():
        jobs += [
            (p.name, p / "model.onnx", p, parse_floats(eps, "--eps") or [])
            for p in sorted(folder.iterdir())
            if (p / "model.onnx").exists() and (p / "x.npy").exists()
        ]
    if not jobs:
        raise InputError("bench certify: nothing to certify (no bundled models and no corpus models)")
    return jobs


def _throughput_cell(r: dict[str, Any]) -> str:
    """ "0.85x (f64 0.21x)": the certify pass over plain inference, then the float64-only pass's."""
    if r["throughput_vs_inference"] is None:
        return "-"
    cell = f"{r['throughput_vs_inference']:.2f}x"
    f64 = r["float64_throughput_vs_inference"]
    return cell if r["float32_tolerance"] == 0 or f64 is None else f"{cell} (f64 {f64:.2f}x)"


def _render_certify(models: dict[str, dict[str, Any]]) -> None:
    from rich.table import Table

    t = Table(
        title="certify: Lipschitz bound, accuracy, certified accuracy, time; throughput = certificate "
        "pass / plain inference"
    )
    for c in (
        "model",
        "n",
        "L upper",
        "L lower",
        "ratio",
        "clean",
        "certified @ eps",
        "median radius",
        "s",
        "throughput",
    ):
        t.add_column(c, justify="left" if c in ("model", "certified @ eps") else "right")
    for name, r in models.items():
        cert = ", ".join(f"{a:.1%}@{e:g}" for e, a in zip(r["eps"], r["certified_accuracy"], strict=True))
        t.add_row(
            name,
            str(r["n"]),
            f"{r['lipschitz_upper']:.4g}",
            "-" if r["lipschitz_lower"] is None else f"{r['lipschitz_lower']:.4g}",
            "-" if r["ratio"] is None else f"{r['ratio']:.3g}",
            f"{r['clean_accuracy']:.1%}",
            cert,
            f"{r['median_radius']:.3g}",
            f"{r['seconds']:.2f}",
            "-" if r["throughput_vs_inference"] is None else f"{r['throughput_vs_inference']:.2f}x",
        )
    out.print(t)


def _quantile_cell(q: dict[str, float] | None) -> str:
    return "-" if q is None else f"{q['p10']:.2g} {q['p50']:.2g} {q['p90']:.2g}"


def _loss_cell(loss: float) -> str:
    """Below 1e-9 the two passes differ only by float64 roundoff (batch composition changes BLAS
    blocking), not by the float32 pass."""
    return "0" if loss == 0 else ("<1e-9" if loss < 1e-9 else f"{loss:.2g}")


def _render_throughput(models: dict[str, dict[str, Any]]) -> None:
    from rich.table import Table

    t = Table(
        title="certify throughput: certificate pass / plain float32 inference (float64 alone: f64); "
        "bound/margin: proven float32 error over margin, p10 p50 p90; f64 share: points whose margins "
        "needed float64; radius loss: largest relative loss against float64 alone"
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


def certify_bench(
    device: DeviceOpt = "cpu",
    corpus: CorpusOpt = None,
    bundled: BundledOpt = True,
    eps: EpsOpt = "0.01,0.05,0.1",
    bundled_eps: BundledEpsOpt = "0.25,0.5,1",
    limit: LimitOpt = None,
    float32_tolerance: ToleranceOpt = 1e-6,
    min_points: MinPointsOpt = 0,
    throughput: ThroughputOpt = False,
    json_out: JsonOpt = None,
) -> None:
    """Per model: Lipschitz upper/lower, clean and certified accuracy, seconds, and the certificate pass's
    throughput as a fraction of plain inference of the same model on the same data, beside a
    float64-only certificate pass (`--throughput`: that comparison alone, with the share of points the
    float32 pass could not settle and the largest radius loss against float64)."""
    from speccert.errors import SpeccertError, UsageError
    from speccert.importers import load

    dev = resolve_device(device)
    check_outputs({"--json": json_out})
    if not 0.0 <= float32_tolerance < 1.0:
        raise UsageError(f"--float32-tolerance must be in [0, 1), got {float32_tolerance}")
    if min_points < 0:
        raise UsageError(f"--min-points must be >= 0, got {min_points}")
    jobs = _certify_jobs(corpus, bundled, eps, bundled_eps)
    report: dict[str, Any] = {"schema": "speccert.bench.certify/1", "device": dev, "models": {}}
    for name, model_path, data, eps_list in jobs:
        err.print(f"certifying {name} ...")
        try:
            report["models"][name] = bench_certify_one(
                load(model_path), data, eps_list, dev, limit, float32_tolerance, min_points
            )
        except SpeccertError as exc:
            err.print(f"note: {name}: skipped ({exc})", highlight=False)
    if json_out != "-":
        (_render_throughput if throughput else _render_certify)(report["models"])
    if json_out is not None:
        write_json(report, json_out)
