"""Per-layer spectral norms: a proven bracket, lower <= norm <= upper, for every linear layer, with the
method and the time. The upper bound is the tightest proven one (`auto`) or the chosen method's; the
lower bound is proven too (the norm of A v for an explicit v).

Examples: `speccert norms model.onnx`, `speccert norms model.onnx --method fantastic4`,
`speccert norms model.pt2 --device cuda --json -`.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from speccert.cli import norm_methods
from speccert.cli.common import (
    DeviceOpt,
    InputShapeOpt,
    JsonOpt,
    ModelArg,
    RandomWeightsOpt,
    RefineAboveOpt,
    TrustPickleOpt,
    WeightsOpt,
    check_exact_max_dim,
    check_outputs,
    check_refine_above,
    err,
    load_model,
    out,
    resolve_device,
    write_json,
)
from speccert.cli.progress import layer_progress


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.6g}"


def norms_report(norms: list[Any], method: str, device: str) -> dict[str, Any]:
    return {
        "schema": "speccert.norms/1",
        "method": method,
        "device": device,
        "layers": [n.to_dict() for n in norms],
        "total_seconds": sum(n.seconds for n in norms),
    }


def render_table(norms: list[Any], title: str) -> None:
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for col, just in (
        ("layer", "left"),
        ("operator", "left"),
        ("in -> out", "left"),
        ("lower", "right"),
        ("upper", "right"),
        ("gap %", "right"),
        ("method", "left"),
        ("s", "right"),
    ):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for n in norms:
        gap = n.gap
        lower = n.lower.value if n.lower is not None else None
        extra = f" (est {n.estimate.value:.4g})" if n.estimate is not None else ""
        shapes = f"{'x'.join(map(str, n.in_shape))} -> {'x'.join(map(str, n.out_shape))}"
        table.add_row(
            n.name,
            n.op,
            shapes,
            _fmt(lower),
            _fmt(n.upper.value) + extra,
            "-" if gap is None else f"{100 * gap:.3f}",
            n.method,
            f"{n.seconds:.2f}",
        )
    out.print(table)
    notes = dict.fromkeys((n.name, note) for n in norms for note in n.notes)  # once each, in order
    for name, note in notes:
        err.print(f"note: {name}: {note}", style="dim", highlight=False)


def command(
    model: ModelArg,
    method: Annotated[str, norm_methods.option()] = "auto",
    device: DeviceOpt = "cpu",
    json_out: JsonOpt = None,
    input_shape: InputShapeOpt = None,
    weights: WeightsOpt = None,
    trust_pickle: TrustPickleOpt = False,
    random_weights: RandomWeightsOpt = False,
    exact_max_dim: Annotated[
        int,
        typer.Option(
            "--exact-max-dim",
            help="Certify zero-padded convs exactly up "
            "to this Gram dimension (default 2048; 25088 covers ResNet-18's 7x7 maps: one "
            "n^3 Cholesky and ~16 n^2 bytes per layer: ~70 s and 10 GB each on 2 CPU cores).",
        ),
    ] = 2048,
    refine_above: RefineAboveOpt = 1.01,
) -> None:
    from speccert.norms import layer_norms

    norm_methods.check(method)
    dev = resolve_device(device)
    check_outputs({"--json": json_out}, inputs={"MODEL": model, "--weights": weights})
    check_exact_max_dim(exact_max_dim)
    check_refine_above(refine_above)
    graph = load_model(model, input_shape, weights, trust_pickle, random_weights=random_weights)
    with layer_progress("speccert norms") as progress:
        norms = layer_norms(
            graph,
            method=method,
            device=dev,
            exact_max_dim=exact_max_dim,
            progress=progress,
            refine_above=refine_above,
        )
    if json_out is not None:
        write_json(norms_report(norms, method, dev), json_out)
    if json_out != "-":
        render_table(norms, f"{model}: per-layer L2 operator norms ({method}, {dev})")
