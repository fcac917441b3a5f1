"""Show a model as speccert sees it: one row per graph node (operator, input -> output shape, number of
parameters, whether a Lipschitz bound exists for it, and why not) and a summary (format, sha256, input
shape, total parameters). Exit code 3 after the table when some node has no bound."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from speccert.cli.common import (
    InputShapeOpt,
    JsonOpt,
    ModelArg,
    RandomWeightsOpt,
    TrustPickleOpt,
    WeightsOpt,
    check_outputs,
    err,
    load_model,
    out,
    styled,
    write_json,
)
from speccert.cli.console import make_console
from speccert.errors import EXIT_UNSUPPORTED, describe_problems

if TYPE_CHECKING:  # torch loads only when a command runs: `speccert --help` stays fast
    from speccert.ir.graph import Graph

SCHEMA = "speccert.inspect/1"


def _reasons(graph: Graph) -> dict[str, str]:
    from speccert.ir.ops import Opaque

    return {
        n.name: (
            n.op.reason if isinstance(n.op, Opaque) else "softmax is only supported as the model's output"
        )
        for n in graph.unsupported()
    }


def inspect_report(graph: Graph) -> dict[str, Any]:
    """The inspect report as plain data (what `--json` writes)."""
    from speccert.ir.graph import all_finite

    reasons = _reasons(graph)
    rows: list[dict[str, Any]] = []
    non_finite_all: list[str] = []
    for n in graph.nodes:
        params = n.op.parameters()
        bad = [f"{n.name}.{k}" for k, t in params.items() if t.is_floating_point() and not all_finite(t)]
        non_finite_all += bad
        rows.append(
            {
                "name": n.name,
                "operator": n.op.describe(),
                "op_type": n.op_type,
                "inputs": list(n.inputs),
                "input_shapes": [list(graph.shape_of(i)) for i in n.inputs],
                "output_shape": list(n.shape),
                "params": int(sum(t.numel() for t in params.values())),
                "lipschitz_supported": n.name not in reasons,
                "reason": reasons.get(n.name),
                "non_finite": bad,
            }
        )
    src = graph.source
    return {
        "schema": SCHEMA,
        "model": src.path if src else None,
        "factory": src.extra.get("factory") if src else None,  # 'module:factory' (model: its weights)
        "format": src.format if src else None,
        "sha256": src.sha256 if src else None,
        "input_shape": list(graph.input_shape),
        "output_shape": list(graph.output_shape),
        "output": graph.output,
        "decision": "argmax",  # what certify/gate/finetune assume unless --decision argmin
        "total_params": int(sum(r["params"] for r in rows)),
        "nodes": rows,
        "unsupported": [
            {
                "op": r["op_type"] if r["op_type"] != "Opaque" else r["operator"].split(" ")[0],
                "node": r["name"],
                "reason": r["reason"],
            }
            for r in rows
            if not r["lipschitz_supported"]
        ],
        "non_finite_parameters": non_finite_all,
    }


def _table(report: dict[str, Any]) -> Table:
    warn = bool(report["non_finite_parameters"])
    title = (
        report["model"] if not report.get("factory") else f"{report['factory']} (weights {report['model']})"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("node", overflow="fold")
    table.add_column("operator")
    table.add_column("input -> output shape")
    table.add_column("#params", justify="right")
    table.add_column("Lipschitz-supported?")
    if warn:
        table.add_column("warning")
    for r in report["nodes"]:
        shapes = " + ".join(str(s) for s in r["input_shapes"]) + f" -> {r['output_shape']}"
        ok = styled("[green]yes[/]") if r["lipschitz_supported"] else styled("[red]no[/]: {}", r["reason"])
        cells: list[str | Text] = [r["name"], r["operator"], shapes, f"{r['params']:,}", ok]
        if warn:
            cells.append(styled("[yellow]NaN/Inf weights[/]") if r["non_finite"] else "")
        table.add_row(*cells)
    return table


def command(
    model: ModelArg,
    input_shape: InputShapeOpt = None,
    weights: WeightsOpt = None,
    trust_pickle: TrustPickleOpt = False,
    random_weights: RandomWeightsOpt = False,
    json: JsonOpt = None,
) -> None:
    import typer

    check_outputs({"--json": json}, inputs={"MODEL": model, "--weights": weights})
    graph = load_model(
        model, input_shape, weights, trust_pickle, allow_unsupported=True, random_weights=random_weights
    )
    report = inspect_report(graph)
    if json is not None:
        write_json(report, json)
    if json != "-":
        # Wide enough for long ONNX node names when the output is not a terminal (a pipe, a CI log).
        console = out if out.is_terminal else make_console(file=out.file, width=200, soft_wrap=True)
        console.print(_table(report))
        sha = (report["sha256"] or "")[:16]
        out.print(
            f"format {report['format']}  sha256 {sha}…  input {report['input_shape']}  "
            f"output {report['output_shape']}  nodes {len(report['nodes'])}  "
            f"params {report['total_params']:,}",
            highlight=False,
        )
        out.print(
            "decision: argmax of the output (the default; certify, gate and finetune take "
            "--decision argmin for models that pick the smallest output, e.g. ACAS Xu costs)",
            highlight=False,
        )
    if report["non_finite_parameters"]:
        err.print(
            styled(
                "[yellow]warning:[/] NaN or Inf weights in {}; certify and norms will refuse this model",
                ", ".join(report["non_finite_parameters"]),
            ),
            highlight=False,
        )
    if report["unsupported"]:
        listing = describe_problems([(u["op"], u["node"], u["reason"]) for u in report["unsupported"]])
        err.print(
            styled(
                "[bold red]error:[/] {} node(s) without a Lipschitz bound: {}",
                len(report["unsupported"]),
                listing,
            ),
            highlight=False,
        )
        raise typer.Exit(EXIT_UNSUPPORTED)
