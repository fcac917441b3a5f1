"""`speccert bench certify`: certify figures and throughput per model, bundled and corpus."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from speccert.cli.bench_corpus import REPO, corpus_folder, missing_corpus_note
from speccert.cli.bench_throughput import bench_throughput_one, render_throughput
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
        help="With --throughput: repeat a model's points up to at least N (timings of the small corpus "
        "sets are otherwise milliseconds); percentages are unchanged, n counts the repeats.",
    ),
]
ThroughputOpt = Annotated[
    bool,
    typer.Option(
        "--throughput",
        help="Instead: plain float32 inference, the certificate pass and the float64-only pass side by "
        "side (best of 5 each), with the proven float32 error over margin, the share of points that "
        "needed float64 and the largest radius loss against float64 alone.",
        metavar="",
    ),
]
ToleranceOpt = Annotated[
    float,
    typer.Option(
        "--float32-tolerance",
        help="Relative radius loss the float32 pass may cost (points it cannot settle within it are "
        "redone in float64); 0 = float64 only.",
    ),
]


def _bundled_models() -> list[str]:
    """The zoo's trained models, as listed in models/manifest.json (none in an installed package)."""
    import json

    manifest = REPO / "models" / "manifest.json"
    return sorted(json.loads(manifest.read_text())["models"]) if manifest.exists() else []


def bench_certify_one(
    graph: Any, data: Any, eps: list[float], device: str, limit: int | None, tolerance: float = 1e-6
) -> dict[str, Any]:
    """One certify() run: the figures issue 4 asks for, with the certify-vs-plain-inference throughput."""
    from speccert.bounds import CertifyOptions, certify

    t0 = time.perf_counter()
    rep = certify(graph, data, eps, CertifyOptions(device=device, float32_tolerance=tolerance), limit=limit)
    t = rep.timing
    return {
        "n": rep.n,
        "lipschitz_upper": rep.lipschitz_upper,
        "lipschitz_lower": rep.lipschitz_lower,
        "ratio": rep.lipschitz_ratio,
        "clean_accuracy": rep.clean_accuracy,
        "eps": eps,
        "certified_accuracy": rep.certified_accuracies,
        "median_radius": rep.median_radius,
        "seconds": time.perf_counter() - t0,
        "norms_s": t["norms_s"],
        "certify_s": t["certify_s"],
        "inference_s": t["inference_s"],
        "throughput_vs_inference": t["certify_samples_per_s"] / t["inference_samples_per_s"]
        if t["inference_samples_per_s"] > 0
        else None,
        "float64_share": t["float64_share"],
    }


def _certify_jobs(
    corpus: Path | None, bundled: bool, eps: str, bundled_eps: str
) -> list[tuple[str, Path, Path, list[float]]]:
    """(name, model file, data, radii) of every model `bench certify` runs: the bundled, then the corpus's."""
    from speccert.cli.certify_cmd import parse_eps
    from speccert.errors import InputError

    # Both lists are checked up front, used or not: a NaN radius used to skip every model with a note, exit 0.
    corpus_eps, bundled_radii = parse_eps(eps, "--eps"), parse_eps(bundled_eps, "--bundled-eps")
    jobs: list[tuple[str, Path, Path, list[float]]] = []
    if bundled and BUNDLED_DATA.exists():
        jobs += [
            (m, REPO / "models" / f"{m}.onnx", BUNDLED_DATA, bundled_radii)
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
            (p.name, p / "model.onnx", p, corpus_eps)
            for p in sorted(folder.iterdir())
            if (p / "model.onnx").exists() and (p / "x.npy").exists()
        ]
    if not jobs:
        raise InputError("bench certify: nothing to certify (no bundled models and no corpus models)")
    return jobs


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
    throughput as a fraction of plain inference of the same model on the same data (`--throughput`:
    speccert.cli.bench_throughput's side-by-side timing instead)."""
    from speccert.errors import SpeccertError, UsageError
    from speccert.importers import load

    dev = resolve_device(device)
    check_outputs({"--json": json_out})
    if not 0.0 <= float32_tolerance < 1.0:
        raise UsageError(f"--float32-tolerance must be in [0, 1), got {float32_tolerance}")
    if min_points < 0:
        raise UsageError(f"--min-points must be >= 0, got {min_points}")
    if limit is not None and limit < 1:  # before: every model skipped with a note, and exit 0
        raise UsageError(f"--limit must be a positive number of samples, got {limit}")
    jobs = _certify_jobs(corpus, bundled, eps, bundled_eps)
    report: dict[str, Any] = {"schema": "speccert.bench.certify/1", "device": dev, "models": {}}
    for name, model_path, data, eps_list in jobs:
        err.print(f"certifying {name} ...")
        try:
            graph = load(model_path)
            report["models"][name] = (
                bench_throughput_one(graph, data, dev, limit, float32_tolerance, min_points)
                if throughput
                else bench_certify_one(graph, data, eps_list, dev, limit, float32_tolerance)
            )
        except SpeccertError as exc:
            err.print(f"note: {name}: skipped ({exc})", highlight=False)
    if json_out != "-":
        (render_throughput if throughput else _render_certify)(report["models"])
    if json_out is not None:
        write_json(report, json_out)
