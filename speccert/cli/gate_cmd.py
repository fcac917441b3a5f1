r"""Certify a model against a policy and fail the build when a rule does not hold (for CI).

Rules come from a policy file (--policy speccert.toml, or \[tool.speccert] in a pyproject.toml; by default
./speccert.toml, else ./pyproject.toml if it has \[tool.speccert]) and/or options such as
--min-cra 0.5@0.25 --min-clean 0.85 --max-lipschitz 40 --max-layer-norm 3 --baseline last.json.
Reports: a table on stdout, --json (gate verdict + rules + the certify report), --junit (one test case per
rule), --markdown (appends, so it can be "$GITHUB_STEP_SUMMARY"). See docs/gate.md.

Exit codes: 0 every rule passed, 1 a rule failed, 2 usage or policy error (bad option, malformed TOML,
unknown key), 3 model not supported, 4 model/data/baseline/policy file unreadable or invalid,
5 internal error.

Policy metrics (\[\[gate.rule]] metric = ...):
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from speccert.cli.common import (
    DecisionOpt,
    InputShapeOpt,
    JsonOpt,
    ModelArg,
    TrustPickleOpt,
    WeightsOpt,
    check_outputs,
    err,
    out,
    write_json,
)
from speccert.cli.output_paths import check_not_inputs
from speccert.cli.progress import stage_progress
from speccert.errors import EXIT_OK
from speccert.gate.metrics import metrics_help

__doc__ = (__doc__ or "") + "\n" + metrics_help()  # the metric list comes from the registry

if TYPE_CHECKING:
    from speccert.gate.rules import RuleSpec
    from speccert.gate.workflow import GateResult
    from speccert.ir import Graph


def _rules_from_options(
    min_cra: list[str] | None,
    min_clean: str | None,
    max_lipschitz: float | None,
    max_layer_norm: float | None,
    min_median_radius: float | None,
) -> list[RuleSpec]:
    from speccert.gate.options import COMMAND_LINE as src
    from speccert.gate.options import parse_clean_option, parse_cra_option
    from speccert.gate.rules import make_rule

    rules = [parse_cra_option(t) for t in min_cra or []]
    if min_clean is not None:
        rules.append(parse_clean_option(min_clean))
    if min_median_radius is not None:
        rules.append(make_rule("median_radius", min=min_median_radius, where="--min-median-radius", src=src))
    if max_lipschitz is not None:
        rules.append(make_rule("lipschitz_upper", max=max_lipschitz, where="--max-lipschitz", src=src))
    if max_layer_norm is not None:
        rules.append(make_rule("max_layer_norm", max=max_layer_norm, where="--max-layer-norm", src=src))
    return rules


def command(
    model: ModelArg,
    policy: Annotated[
        Path | None,
        typer.Option(
            "--policy",
            help="Policy TOML: speccert.toml, or a pyproject.toml "
            "with \\[tool.speccert]. Default: ./speccert.toml if present.",
        ),
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option(
            "--baseline",
            help="Baseline report (JSON of an earlier gate or certify run): enables no_regression.",
        ),
    ] = None,
    junit: Annotated[
        str | None, typer.Option("--junit", help="Write JUnit XML here (one test case per rule).")
    ] = None,
    markdown: Annotated[
        str | None,
        typer.Option("--markdown", help="Append a Markdown summary here (works with $GITHUB_STEP_SUMMARY)."),
    ] = None,
    json_out: JsonOpt = None,
    min_cra: Annotated[
        list[str] | None,
        typer.Option(
            "--min-cra",
            metavar="ACC@EPS",
            help="Rule: certified accuracy at radius EPS >= ACC, e.g. 0.5@0.25 or 50%@0.25. Repeatable.",
        ),
    ] = None,
    min_clean: Annotated[
        str | None,
        typer.Option("--min-clean", metavar="ACC", help="Rule: clean accuracy >= ACC, e.g. 0.85 or 85%."),
    ] = None,
    max_lipschitz: Annotated[
        float | None, typer.Option("--max-lipschitz", help="Rule: proven Lipschitz upper bound <= this.")
    ] = None,
    max_layer_norm: Annotated[
        float | None,
        typer.Option(
            "--max-layer-norm", help="Rule: every layer's proven spectral-norm upper bound <= this."
        ),
    ] = None,
    min_median_radius: Annotated[
        float | None, typer.Option("--min-median-radius", help="Rule: median certified radius >= this.")
    ] = None,
    max_cra_drop: Annotated[
        float | None,
        typer.Option(
            "--max-cra-drop",
            help="no_regression: allowed absolute drop of certified accuracy (default 0.01).",
        ),
    ] = None,
    max_lipschitz_growth: Annotated[
        float | None,
        typer.Option(
            "--max-lipschitz-growth", help="no_regression: allowed growth factor of L (default 1.05)."
        ),
    ] = None,
    data: Annotated[
        str | None, typer.Option("--data", help="Data to certify on (overrides the policy's).")
    ] = None,
    split: Annotated[str | None, typer.Option("--split", help="test or train (IDX folders).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Use the first N samples.")] = None,
    eps: Annotated[
        str | None, typer.Option("--eps", help="Radii, e.g. 0.1,0.25,0.5 (rule radii are added).")
    ] = None,
    method: Annotated[
        str | None, typer.Option("--method", help="Norm method (default: the policy's, or auto).")
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed of every random choice (default: the policy's, or 0).")
    ] = None,
    lower_bound: Annotated[
        bool,
        typer.Option(
            "--lower-bound",
            help="Also measure an empirical lower bound on "
            "the Lipschitz constant (slower; not used by rules).",
            metavar="",
        ),
    ] = False,
    input_shape: InputShapeOpt = None,
    weights: WeightsOpt = None,
    trust_pickle: TrustPickleOpt = False,
    decision: DecisionOpt = "argmax",
) -> None:
    from speccert.gate.options import COMMAND_LINE, parse_eps_option, with_overrides
    from speccert.gate.outputs import write_output
    from speccert.gate.policy import Policy, discover_policy, read_policy
    from speccert.gate.workflow import gate
    from speccert.ir.decision import check_decision, decide_by

    outputs = {"--json": json_out, "--junit": junit, "--markdown": markdown}
    check_outputs(
        outputs,
        inputs={
            "MODEL": model,
            "--policy": policy,
            "--baseline": baseline,
            "--data": data,
            "--weights": weights,
        },
    )
    check_decision(decision)
    cli_rules = _rules_from_options(min_cra, min_clean, max_lipschitz, max_layer_norm, min_median_radius)
    policy_path = policy if policy is not None else discover_policy(".")
    pol = read_policy(policy_path) if policy_path is not None else Policy(source=COMMAND_LINE)
    if policy is None and policy_path is not None:
        err.print(f"policy: {policy_path}", highlight=False, markup=False)
    if input_shape is not None:
        from speccert.importers import parse_input_shape

        pol = dataclasses.replace(
            pol, data=dataclasses.replace(pol.data, input_shape=parse_input_shape(input_shape))
        )
    if lower_bound:
        pol = dataclasses.replace(pol, lower_bound=True)
    pol = with_overrides(
        pol,
        rules=cli_rules,
        eps=parse_eps_option(eps) if eps is not None else None,
        data=data,
        limit=limit,
        split=split,
        method=method,
        device=device,
        seed=seed,
        baseline=baseline,
        max_cra_drop=max_cra_drop,
        max_lipschitz_growth=max_lipschitz_growth,
    )
    check_not_inputs(  # the files the policy names are inputs too
        outputs,
        {
            "policy": policy_path,
            "[gate.data] path": pol.data.path,
            "[gate.no_regression] baseline": pol.regression.baseline if pol.regression else None,
        },
    )

    with stage_progress(f"speccert gate {model}") as progress:
        target: str | Graph = model
        if decision != "argmax":  # load here: gate() certifies a given graph as it is
            from speccert.importers import load

            target = decide_by(
                load(model, pol.data.input_shape, weights=weights, trust_pickle=trust_pickle), decision
            )
        result = gate(
            target,
            pol,
            weights=os.fspath(weights) if weights is not None else None,
            trust_pickle=trust_pickle,
            progress=progress,
        )

    if json_out is not None:
        write_json(result.to_dict(), json_out)
    if junit is not None:
        write_output("junit", result, junit)
    if markdown is not None:
        write_output("markdown", result, markdown)
    _render(result, to_stderr=json_out == "-")
    if result.exit_code != EXIT_OK:
        raise typer.Exit(result.exit_code)


def _render(result: GateResult, to_stderr: bool) -> None:
    """The rules table and verdict. Paths, rule names, notes and messages are user text: they go in as
    plain `Text` (never parsed as markup), so `[/v2]` in a path prints as written and cannot raise."""
    from rich.table import Table

    from speccert.gate.outputs.markdown import num

    console = err if to_stderr else out
    model = result.report.get("model") or {}
    cert = result.report.get("certificate") or {}
    title = f"speccert gate: {model.get('path', '?')} ({cert.get('n', '?')} points, {result.seconds:.1f} s)"
    table = Table(title=Text(title, style="table.title"), title_justify="left")
    table.add_column("rule")
    table.add_column("value", justify="right")
    table.add_column("threshold", justify="right")
    table.add_column("result", justify="center")
    for r in result.rules:
        value = num(r.value, 6) + (f" (baseline {num(r.baseline, 6)})" if r.baseline is not None else "")
        table.add_row(
            Text(r.name),
            Text(value),
            Text(f"{r.op} {num(r.threshold, 6)}"),
            Text("pass", style="green") if r.passed else Text("FAIL", style="bold red"),
        )
    console.print(table)
    for note in result.notes:
        console.print(Text(f"note: {note}"), highlight=False)
    n, failed = len(result.rules), len(result.failures)
    if result.passed:
        console.print(Text.assemble(("PASSED", "bold green"), f": all {n} rules hold"))
    else:
        console.print(Text.assemble(("FAILED", "bold red"), f": {failed} of {n} rules do not hold"))
        for r in result.failures:
            console.print(Text(f"  - {r.message}"), highlight=False)
