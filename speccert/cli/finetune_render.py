"""What `speccert finetune` prints: a table per epoch, the Pareto table of the best epochs, and the closing
report (JSON and/or the certify report of the written file, notes and the verdict)."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from speccert.cli.common import err, out, styled, write_json


def epoch_table(rec: Any, eps: list[float]) -> Table:
    """One epoch's row: loss, clean accuracy, L, certified accuracy per eps, penalty weight, targets."""
    t = Table(title=f"epoch {rec.epoch}" + (" (input model)" if rec.epoch == 0 else ""), title_justify="left")
    for col in (
        "loss",
        "clean acc",
        "L upper",
        *(f"cert acc @{e:g}" for e in eps),
        "penalty weight",
        "targets",
    ):
        t.add_column(col, justify="right")
    loss = "-" if rec.loss != rec.loss else f"{rec.loss:.4f}"
    t.add_row(
        loss,
        f"{rec.clean:.2%}",
        f"{rec.lipschitz:.4g}",
        *(f"{rec.cra.get(e, 0.0):.2%}" for e in eps),
        f"{rec.weight:.4g}",
        styled("[green]met[/]") if rec.met else styled("[yellow]{} missed[/]", len(rec.missed)),
    )
    return t


def _pareto_table(res: Any, eps: list[float]) -> Table:
    """The epochs no other epoch beats on both clean and certified accuracy (weights in the run folder)."""
    where = f" (weights: {res.run_dir}/epoch-N.pt)" if res.run_dir is not None else ""
    t = Table(title=Text(f"Pareto front, clean vs certified @{max(eps):g}{where}"), title_justify="left")
    for col in ("epoch", "clean acc", *(f"cert acc @{e:g}" for e in eps), "L upper", "written"):
        t.add_column(col, justify="right")
    for r in res.pareto:
        mark = "yes" if r.epoch == res.best_epoch else ""
        t.add_row(
            str(r.epoch),
            f"{r.clean:.2%}",
            *(f"{r.cra.get(e, 0.0):.2%}" for e in eps),
            f"{r.lipschitz:.4g}",
            mark,
        )
    return t


def render_result(res: Any, eps: list[float], json_out: str | None) -> None:
    """The closing output: JSON (history, Pareto epochs, the output's certify report) and/or the
    certify report of the written file, the Pareto table, notes and the verdict."""
    from speccert.cli.certify_render import render

    report = res.report.to_dict(samples=False) if res.report is not None else None
    if json_out is not None:
        write_json(
            {
                "finetune": {
                    "met": res.met,
                    "missed": res.missed,
                    "best_epoch": res.best_epoch,
                    "augment": res.augment,
                    "widened": [{"layer": n, "from": a, "to": b} for n, a, b in res.widened],
                    "pareto": [r.epoch for r in res.pareto],
                    "output": str(res.output) if res.output else None,
                    "history": [
                        r.__dict__ | {"cra": {str(k): v for k, v in r.cra.items()}} for r in res.history
                    ],
                },
                "report": report,
            },
            json_out,
        )
    if json_out != "-":
        if report is not None:
            out.print(styled("[bold]Certify report of the output model[/] {}", res.output))
            render(report, out)
        if len(res.history) > 1:
            out.print(_pareto_table(res, eps))
        for note in res.notes:
            err.print(f"note: {note}", style="dim")
        if res.met:
            out.print(styled("[green]every target met[/] at epoch {}; wrote {}", res.best_epoch, res.output))
        else:
            out.print(
                styled(
                    "[red]targets missed[/] after {} epochs; best epoch {} written to {}:",
                    res.history[-1].epoch,
                    res.best_epoch,
                    res.output,
                )
            )
            for m in res.missed:
                out.print(Text(f"  - {m}"))
