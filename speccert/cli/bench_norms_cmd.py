"""`speccert bench norms`: norm methods side by side on every linear layer, tightness and time."""

from __future__ import annotations

import dataclasses
import importlib.util
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from speccert.cli.bench_corpus import REPO, corpus_folder, missing_corpus_note
from speccert.cli.common import (
    DeviceOpt,
    JsonOpt,
    RefineAboveOpt,
    check_exact_max_dim,
    check_outputs,
    check_refine_above,
    err,
    out,
    resolve_device,
    write_json,
)
from speccert.cli.progress import layer_progress

CorpusOpt = Annotated[
    Path | None,
    typer.Option(
        "--corpus", help="Folder of VNN-COMP models (<name>/model.onnx); default ../shared/onnx-corpus."
    ),
]
ResnetOpt = Annotated[
    bool, typer.Option("--resnet/--no-resnet", help="Include the ResNet-18 (BatchNorm folded).", metavar="")
]
ResnetSizeOpt = Annotated[int, typer.Option("--resnet-size", help="ResNet-18 input side (ImageNet: 224).")]
ResnetWeightsOpt = Annotated[
    Path | None,
    typer.Option(
        "--resnet-weights",
        help="torchvision resnet18 state_dict "
        "file (default: torchvision-style random init; no network here to fetch the zoo's).",
    ),
]
DetailOpt = Annotated[bool, typer.Option("--detail", help="Also print every layer.", metavar="")]
ExactMaxDimOpt = Annotated[
    int,
    typer.Option(
        "--exact-max-dim",
        help="As in `speccert norms`: exact "
        "certificates for convs up to this Gram dimension (25088: ResNet-18's layer4).",
    ),
]


def _resnet18_graph(size: int, weights: Path | None) -> Any:
    path = REPO / "benchmarks" / "resnet18.py"
    spec = importlib.util.spec_from_file_location("speccert_bench_resnet18", path)
    if spec is None or spec.loader is None or not path.exists():
        return None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    try:
        module = mod.resnet18_module(weights=str(weights) if weights else None)
    except Exception as exc:  # torch.load / load_state_dict on the user's file: any failure is the file's
        from speccert.errors import InputError

        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0][:160]
        raise InputError(
            f"--resnet-weights {weights}: not a torchvision resnet18 state_dict ({first})"
        ) from None
    return mod.resnet18_graph(module, size)


def bench_graph(
    graph: Any,
    device: str,
    power_steps: int = 100,
    exact_max_dim: int = 2048,
    progress: Callable[[int, int, str], None] | None = None,
    refine_above: float | None = None,
) -> dict[str, Any]:
    """auto vs plain power iteration (fixed steps, random start) vs Fantastic-Four on every linear layer.

    Each method's value is divided by the best proven lower bound found for the layer: >= 1 for upper
    bounds (1 = exact), <= 1 for power iteration (how far below the truth it stops). `progress(i, n, text)`
    as in `layer_norms`; `refine_above` as there (None: its default).
    """
    import torch

    from speccert.norms import METHODS, load_methods
    from speccert.norms.auto import linear_layers
    from speccert.norms.method import NormContext

    load_methods()
    ctx = NormContext(device=torch.device(device), exact_max_dim=exact_max_dim)
    if refine_above is not None:
        ctx = dataclasses.replace(ctx, refine_above=refine_above)
    f4 = METHODS.get("fantastic4")
    times = {"auto": 0.0, "auto_upper": 0.0, "auto_unrefined": 0.0, "power": 0.0, "fantastic4": 0.0}
    layers = linear_layers(graph)
    tell = progress or (lambda i, n, text: None)
    rows = [
        _bench_layer(layer, ctx, f4, power_steps, times, progress, tell, i, len(layers))
        for i, layer in enumerate(layers)
    ]
    tell(len(layers), len(layers), "")
    return {"layers": rows, "seconds": times}


def _bench_layer(
    layer: Any,
    ctx: Any,
    f4: Any,
    power_steps: int,
    times: dict[str, float],
    progress: Callable[[int, int, str], None] | None,
    tell: Callable[[int, int, str], None],
    i: int,
    n: int,
) -> dict[str, Any]:
    """One layer of `bench_graph`: its row, with each method's seconds added to `times`."""
    import torch

    from speccert.norms import METHODS
    from speccert.norms.auto import norm_of_layer, unrefined_upper, with_progress
    from speccert.norms.krylov import power_iteration
    from speccert.norms.precision import exact_float_math

    tell(i, n, f"{layer.name}: auto")
    t0 = time.perf_counter()
    ln = norm_of_layer(layer, "auto", with_progress(ctx, progress, i, n, f"{layer.name}: auto"))
    times["auto"] += time.perf_counter() - t0
    # The upper-bound methods alone (auto's lower bound is extra work Fantastic-Four does not do), and
    # without the "refine" stage (what auto gave before it: the refinement's price and gain). Where a
    # refine method ran first in place of the upper stage, that stage runs here on its own (outside
    # auto's time) for the comparison.
    ups = [r for r in ln.others.values() if r.kind == "upper"]
    plain = [r for r in ups if METHODS.get(r.method).auto.stage != "refine"]
    if not plain and len(ups) > 0:
        tell(i, n, f"{layer.name}: auto before its refine stage")
        plain = unrefined_upper(layer, ctx)
    times["auto_upper"] += sum(r.seconds for r in ups)
    times["auto_unrefined"] += sum(r.seconds for r in plain)
    tell(i, n, f"{layer.name}: power({power_steps})")
    t0 = time.perf_counter()
    pw = power_iteration(
        layer,
        ctx.device,
        torch.float32 if ctx.device.type == "cuda" else torch.float64,
        max_iter=power_steps,
        fixed_steps=True,
    )
    times["power"] += time.perf_counter() - t0
    f4v = None
    if f4.applies(layer):
        tell(i, n, f"{layer.name}: fantastic4")
        t0 = time.perf_counter()
        with exact_float_math():  # a certificate too (norm_of_layer guards auto's own)
            f4v = f4.compute(layer, ctx)[0].value
        times["fantastic4"] += time.perf_counter() - t0
    best_lower = max(ln.lower.value if ln.lower else 0.0, pw.lower)
    return {
        "layer": layer.name,
        "op": layer.describe(),
        "conv": layer.conv() is not None,
        "lower": best_lower,
        "auto": ln.upper.value,
        "auto_upper": ln.upper.value,
        "auto_unrefined": min((r.value for r in plain), default=ln.upper.value),
        "auto_method": ln.method,
        "auto_lower": ln.lower.value if ln.lower else None,
        "power": pw.lower,
        "fantastic4": f4v,
        "seconds": ln.seconds,
    }


def summarise(result: dict[str, Any]) -> dict[str, dict[str, float | int | None]]:
    rows = result["layers"]
    summary: dict[str, dict[str, float | int | None]] = {}
    for m in ("auto", "auto_upper", "auto_unrefined", "power", "fantastic4"):
        ratios = [r[m] / r["lower"] for r in rows if r[m] is not None and r["lower"] > 0]
        conv = [r[m] / r["lower"] for r in rows if r[m] is not None and r["lower"] > 0 and r["conv"]]
        summary[m] = {
            "layers": len(ratios),
            "seconds": result["seconds"][m],
            "max_ratio": max(ratios) if ratios else None,
            "median_ratio": statistics.median(ratios) if ratios else None,
            "conv_max_ratio": max(conv) if conv else None,
            "conv_median_ratio": statistics.median(conv) if conv else None,
        }
    return summary


def _render(name: str, summary: dict[str, dict[str, Any]], rows: list[dict[str, Any]], detail: bool) -> None:
    from rich.table import Table

    auto_s = summary["auto"]["seconds"] or 1e-12
    t = Table(title=f"{name}: value / best proven lower bound, per layer")
    for c in (
        "method",
        "layers",
        "total s",
        "x auto time",
        "max ratio",
        "median ratio",
        "conv max",
        "conv median",
    ):
        t.add_column(c, justify="left" if c == "method" else "right")

    def f(x: float | None, p: int = 6) -> str:
        return "-" if x is None else f"{x:.{p}f}"

    labels = {
        "auto": "auto (upper; time: upper + lower)",
        "auto_upper": "auto (upper; time: upper only)",
        "auto_unrefined": "auto before its refine stage (upper only)",
        "power": "power, 100 steps (lower)",
        "fantastic4": "fantastic4 (upper)",
    }
    for m, s in summary.items():
        t.add_row(
            labels[m],
            str(s["layers"]),
            f"{s['seconds']:.2f}",
            f"{s['seconds'] / auto_s:.2f}",
            f(s["max_ratio"]),
            f(s["median_ratio"]),
            f(s["conv_max_ratio"]),
            f(s["conv_median_ratio"]),
        )
    out.print(t)
    if detail:
        d = Table(title=f"{name}: per layer")
        for c in (
            "layer",
            "op",
            "lower",
            "auto upper",
            "gap %",
            "by",
            "before refine",
            "fantastic4",
            "power100",
            "s",
        ):
            d.add_column(c)
        for r in rows:
            gap = 100 * (r["auto"] / r["lower"] - 1) if r["lower"] > 0 else None
            d.add_row(
                r["layer"],
                r["op"],
                f"{r['lower']:.6g}",
                f"{r['auto']:.6g}",
                f(gap, 3),
                r["auto_method"],
                "-" if r["auto_unrefined"] == r["auto"] else f"{r['auto_unrefined']:.6g}",
                "-" if r["fantastic4"] is None else f"{r['fantastic4']:.6g}",
                f"{r['power']:.6g}",
                f"{r['seconds']:.2f}",
            )
        out.print(d)


def _norms_models(
    corpus: Path | None, resnet: bool, resnet_size: int, resnet_weights: Path | None
) -> list[tuple[str, Any]]:
    """(name, graph) of every model `bench norms` measures: the ResNet-18, then the corpus's."""
    from speccert.errors import SpeccertError
    from speccert.importers import load

    models: list[tuple[str, Any]] = []
    if resnet:
        g = _resnet18_graph(resnet_size, resnet_weights)
        if g is None:
            err.print("note: benchmarks/resnet18.py not found (installed package?); skipping ResNet-18")
        else:
            models.append(
                (
                    f"resnet18 ({resnet_size}x{resnet_size}, "
                    f"{'weights ' + str(resnet_weights) if resnet_weights else 'random init'})",
                    g,
                )
            )
    folder = corpus_folder(corpus)
    if corpus is None and not folder.is_dir():
        missing_corpus_note(folder, "its models are skipped")
    if folder.is_dir():
        for sub in sorted(p for p in folder.iterdir() if (p / "model.onnx").exists()):
            try:
                models.append((sub.name, load(sub / "model.onnx")))
            except SpeccertError as exc:
                err.print(f"note: {sub.name}: skipped ({exc})", highlight=False)
    elif corpus is not None:
        from speccert.errors import InputError

        raise InputError(f"--corpus {corpus}: not a folder")
    return models


def norms(
    device: DeviceOpt = "cpu",
    corpus: CorpusOpt = None,
    resnet: ResnetOpt = True,
    resnet_size: ResnetSizeOpt = 224,
    resnet_weights: ResnetWeightsOpt = None,
    detail: DetailOpt = False,
    exact_max_dim: ExactMaxDimOpt = 2048,
    refine_above: RefineAboveOpt = 1.01,
    json_out: JsonOpt = None,
) -> None:
    """auto vs plain power iteration (100 steps per layer) vs Fantastic-Four: seconds and tightness."""
    dev = resolve_device(device)
    check_outputs({"--json": json_out}, inputs={"--resnet-weights": resnet_weights})
    check_exact_max_dim(exact_max_dim)
    check_refine_above(refine_above)
    if resnet and resnet_size < 1:
        from speccert.errors import UsageError

        raise UsageError(f"--resnet-size is the input side in pixels, >= 1, got {resnet_size}")
    if resnet_weights is not None and not resnet_weights.is_file():
        from speccert.errors import InputError

        raise InputError(f"--resnet-weights {resnet_weights}: no such file")
    models = _norms_models(corpus, resnet, resnet_size, resnet_weights)
    if not models:
        from speccert.errors import InputError

        raise InputError("bench norms: nothing to benchmark (no ResNet-18 and no corpus models)")
    report: dict[str, Any] = {"schema": "speccert.bench.norms/1", "device": dev, "models": {}}
    for name, graph in models:
        err.print(f"benchmarking {name} ...")  # err parses no markup: escaping would print backslashes
        with layer_progress(name) as progress:
            res = bench_graph(
                graph, dev, exact_max_dim=exact_max_dim, progress=progress, refine_above=refine_above
            )
        summary = summarise(res)
        report["models"][name] = {"summary": summary, "layers": res["layers"]}
        if json_out != "-":
            _render(name, summary, res["layers"], detail)
    if json_out is not None:
        write_json(report, json_out)
