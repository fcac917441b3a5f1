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


def _bundled_models() -> list[str]:
    """The zoo's trained models, as listed in models/manifest.json (none in an installed package)."""
    import json

    manifest = REPO / "models" / "manifest.json"
    return sorted(json.loads(manifest.read_text())["models"]) if manifest.exists() else []


def bench_certify_one(
    graph: Any, data: Any, eps: list[float], device: str, limit: int | None
) -> dict[str, Any]:
    """One certify() run: the figures issue 4 asks for, with the certify-vs-plain-inference throughput."""
    from speccert.bounds import CertifyOptions, certify

    t0 = time.perf_counter()
    rep = certify(graph, data, eps, CertifyOptions(device=device), limit=limit)
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
    }


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
    json_out: JsonOpt = None,
) -> None:
    """Per model: Lipschitz upper/lower, clean and certified accuracy, seconds, and the certificate pass's
    throughput as a fraction of plain inference of the same model on the same data."""
    from speccert.errors import SpeccertError
    from speccert.importers import load

    dev = resolve_device(device)
    check_outputs({"--json": json_out})
    jobs = _certify_jobs(corpus, bundled, eps, bundled_eps)
    report: dict[str, Any] = {"schema": "speccert.bench.certify/1", "device": dev, "models": {}}
    for name, model_path, data, eps_list in jobs:
        err.print(f"certifying {name} ...")
        try:
            report["models"][name] = bench_certify_one(load(model_path), data, eps_list, dev, limit)
        except SpeccertError as exc:
            err.print(f"note: {name}: skipped ({exc})", highlight=False)
    if json_out != "-":
        _render_certify(report["models"])
    if json_out is not None:
        write_json(report, json_out)
