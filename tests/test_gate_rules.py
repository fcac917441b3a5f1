"""Gate rules and no_regression as pure functions over hand-built certify report dicts."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from gate_report_dicts import report

from speccert.errors import InputError, UsageError
from speccert.gate.baseline import baseline_report, comparison_notes, regression_rules
from speccert.gate.metrics import load_metrics, metric
from speccert.gate.policy import Policy, RegressionSpec, make_rule
from speccert.gate.rules import RuleResult, evaluate_rule
from speccert.gate.workflow import evaluate


def test_every_registered_metric_makes_a_rule_with_its_bound() -> None:
    assert set(load_metrics().keys()) >= {
        "certified_accuracy",
        "clean_accuracy",
        "median_radius",
        "lipschitz_upper",
        "max_layer_norm",
    }
    for name, m in load_metrics().items():
        eps = 0.1 if m.needs_eps else None
        rule = make_rule(name, eps=eps, **{m.bound: 0.5})
        assert rule.bound == m.bound and rule.eps == eps and m.name == name and m.description
        other = "max" if m.bound == "min" else "min"
        with pytest.raises(UsageError, match=f"takes '{m.bound}', not '{other}'"):
            make_rule(name, eps=eps, **{other: 0.5})
        # the metric's name is its reader's name: registering the same reader again is a duplicate
        with pytest.raises(KeyError, match="already registered"):
            metric(bound=m.bound, reads=m.reads)(m.read)


@pytest.mark.parametrize(
    ("rule", "value", "passed"),
    [
        (make_rule("certified_accuracy", min=0.6, eps=0.25), 0.6, True),  # equality passes
        (make_rule("certified_accuracy", min=0.61, eps=0.25), 0.6, False),
        (make_rule("certified_accuracy", min=0.3, eps=0.5), 0.3, True),
        (make_rule("clean_accuracy", min=0.85), 0.9, True),
        (make_rule("clean_accuracy", min=0.95), 0.9, False),
        (make_rule("median_radius", min=0.31), 0.3, False),
        (make_rule("lipschitz_upper", max=12), 12.0, True),
        (make_rule("lipschitz_upper", max=11.99), 12.0, False),
        (make_rule("max_layer_norm", max=3), 3.5, False),  # max over layers, not the first
        (make_rule("max_layer_norm", max=3.5), 3.5, True),
    ],
)
def test_rule_values_and_verdicts(rule: Any, value: float, passed: bool) -> None:
    res = evaluate_rule(rule, report())
    assert res.value == pytest.approx(value, abs=0)
    assert res.passed is passed
    assert f"{value:.6g}" in res.message and f"{rule.threshold:g}" in res.message


def test_radius_is_matched_not_indexed() -> None:
    # eps 0.25 must read the 0.25 column even when the report lists radii in another order
    r = report(cra=(0.3, 0.8, 0.6), eps=(0.5, 0.1, 0.25))
    assert evaluate_rule(make_rule("certified_accuracy", min=0.6, eps=0.25), r).value == 0.6
    assert evaluate_rule(make_rule("certified_accuracy", min=0.0, eps=0.2), r).value is None


@pytest.mark.parametrize("r", [report(lip=None), report(uppers=(1.0, None)), report(uppers=())])
def test_unmeasurable_values_never_pass(r: dict[str, Any]) -> None:
    # null means infinite or undefined in the report: a max rule must fail, even with a huge threshold
    rules = [make_rule("lipschitz_upper", max=1e300), make_rule("max_layer_norm", max=1e300)]
    results = [evaluate_rule(x, r) for x in rules]
    assert not all(x.passed for x in results)
    assert any(x.value is None and "not in the report" in x.message for x in results)


def test_missing_radius_fails() -> None:
    res = evaluate_rule(make_rule("certified_accuracy", min=0.0, eps=0.3), report())
    assert res.value is None and not res.passed


def test_evaluate_without_rules_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no rules"):
        evaluate(report(), Policy())


def test_regression_within_and_beyond_tolerance() -> None:
    base = report(cra=(0.8, 0.6, 0.3), lip=10.0, sha="b" * 64)
    cur = report(cra=(0.79, 0.55, 0.3), lip=10.9)
    spec = RegressionSpec(max_cra_drop=0.02, max_lipschitz_growth=1.1)
    res = {r.name: r for r in regression_rules(cur, base, spec)}
    assert set(res) == {
        "no_regression: certified_accuracy@0.1",
        "no_regression: certified_accuracy@0.25",
        "no_regression: certified_accuracy@0.5",
        "no_regression: lipschitz_upper",
    }
    assert res["no_regression: certified_accuracy@0.1"].passed  # dropped 0.01 <= 0.02
    assert not res["no_regression: certified_accuracy@0.25"].passed  # dropped 0.05 > 0.02
    assert res["no_regression: certified_accuracy@0.25"].baseline == 0.6
    assert res["no_regression: certified_accuracy@0.25"].threshold == pytest.approx(0.58)
    assert res["no_regression: certified_accuracy@0.5"].passed
    assert res["no_regression: lipschitz_upper"].passed  # 10.9 <= 11
    grown = regression_rules(report(lip=11.2), base, spec)
    assert not [r for r in grown if r.metric == "no_regression.lipschitz_upper"][0].passed


def test_regression_exact_tolerance_edge() -> None:
    # 0.6 - 0.05 is 0.5499999... in floats: a drop of exactly the tolerance must pass
    base, cur = report(cra=(0.8, 0.6, 0.3)), report(cra=(0.8, 0.55, 0.3))
    res = regression_rules(cur, base, RegressionSpec(max_cra_drop=0.05))
    assert all(r.passed for r in res)


def test_clean_drop_only_when_asked() -> None:
    base, cur = report(clean=0.9), report(clean=0.8)
    assert not any(
        r.metric == "no_regression.clean_accuracy" for r in regression_rules(cur, base, RegressionSpec())
    )
    res = regression_rules(cur, base, RegressionSpec(max_clean_drop=0.05))
    assert [r.passed for r in res if r.metric == "no_regression.clean_accuracy"] == [False]


def test_baseline_from_other_model_is_noted_not_failed() -> None:
    pol = Policy(regression=RegressionSpec())
    res = evaluate(report(sha="c" * 64, n=50), pol, report(sha="d" * 64))
    assert res.passed
    assert any("another model file" in n for n in res.notes)
    assert any("100 points" in n and "50" in n for n in res.notes)
    assert res.baseline is not None and res.baseline["model_sha256"] == "d" * 64
    same = evaluate(report(), pol, report())
    assert any("same model file" in n for n in same.notes)


def test_baseline_accepts_gate_json_and_rejects_other_json() -> None:
    inner = report()
    gate_json = {"schema_version": "1.0", "kind": "speccert-gate", "rules": [], "report": inner}
    assert baseline_report(gate_json) is inner
    assert baseline_report(inner) is inner
    with pytest.raises(InputError, match="not a speccert report"):
        baseline_report({"hello": 1})


def test_baseline_without_shared_radius_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="shares no radius"):
        regression_rules(report(eps=(0.7,), cra=(0.1,)), report(), RegressionSpec())


def test_notes_list_radii_missing_from_baseline_and_schema_changes() -> None:
    notes = comparison_notes(report(eps=(0.1, 0.75), cra=(0.8, 0.1)), report())
    assert any("0.75" in n for n in notes)
    assert not any("schema" in n for n in notes)


def test_gate_verdict_and_exit_code() -> None:
    pol = Policy(
        rules=(make_rule("certified_accuracy", min=0.5, eps=0.25), make_rule("lipschitz_upper", max=5))
    )
    res = evaluate(report(), pol)
    assert not res.passed and res.exit_code == 1 and [r.metric for r in res.failures] == ["lipschitz_upper"]
    d = res.to_dict()
    assert (
        d["summary"] == {"rules": 2, "failed": 1}
        and d["passed"] is False
        and d["report"]["kind"] == "certify"
    )
    ok = evaluate(report(), Policy(rules=(make_rule("lipschitz_upper", max=12),)))
    assert ok.passed and ok.exit_code == 0
    with pytest.raises(UsageError, match="finite"):
        make_rule("lipschitz_upper", max=math.inf)
    unbounded = RuleResult("r", "lipschitz_upper", "<=", 1.0, math.inf, False, "m")
    assert unbounded.to_dict()["value"] == "inf"  # JSON has no inf


_DELETE = object()


def _baseline(path: str, value: Any) -> dict[str, Any]:
    root = report()
    doc: Any = root
    *parents, leaf = path.split(".")
    for key in parents:
        doc = doc[key]
    if value is _DELETE:
        del doc[leaf]
    else:
        doc[leaf] = value
    return root


BAD_BASELINES = [
    ("certificate.certified_accuracy", [math.nan, 0.6, 0.3], "certificate.certified_accuracy[0]"),
    ("certificate.certified_accuracy", [0.8, -5, 0.3], "certificate.certified_accuracy[1]"),
    ("certificate.certified_accuracy", [0.8, 0.6, 1e308], "certificate.certified_accuracy[2]"),
    ("certificate.certified_accuracy", [0.8, 0.6], "certificate.certified_accuracy"),
    ("certificate.certified_accuracy", [0.8, 0.9, 0.3], "certificate.certified_accuracy[1]"),  # > at 0.1
    ("certificate.certified_accuracy", ["0.8", 0.6, 0.3], "certificate.certified_accuracy[0]"),
    ("certificate.clean_accuracy", math.nan, "certificate.clean_accuracy"),
    ("certificate.clean_accuracy", 1e308, "certificate.clean_accuracy"),
    ("certificate.clean_accuracy", 0.5, "certificate.certified_accuracy[0]"),  # cra 0.8 > clean 0.5
    ("certificate.clean_accuracy", _DELETE, "certificate.clean_accuracy"),
    ("certificate.eps", [0.1, math.inf, 0.5], "certificate.eps[1]"),
    ("certificate.eps", [0.1, -5, 0.5], "certificate.eps[1]"),
    ("certificate.eps", [0.1, 0.1, 0.5], "gives eps 0.1 twice"),  # two accuracies at one radius
    ("certificate.eps", _DELETE, "certificate.eps"),
    ("certificate.median_radius", -5, "certificate.median_radius"),
    ("certificate.median_radius", math.nan, "certificate.median_radius"),
    ("certificate.n", 0, "certificate.n"),
    ("lipschitz.upper", math.nan, "lipschitz.upper"),
    ("lipschitz.upper", -5, "lipschitz.upper"),
    ("lipschitz.upper", math.inf, "lipschitz.upper"),
    ("lipschitz.upper", "12", "lipschitz.upper"),
    ("lipschitz.upper", 0.5, "lipschitz.lower"),  # lower 1.0 > upper 0.5
    ("lipschitz", _DELETE, "lipschitz"),
    ("model", _DELETE, "model"),
    ("schema_version", "2.0.0", "schema 2.0.0"),
    ("schema_version", "0.9.0", "schema 0.9.0"),
    ("schema_version", _DELETE, "schema_version"),
    ("kind", "speccert-gate", "kind"),
]


@pytest.mark.parametrize(("path", "value", "named"), BAD_BASELINES)
def test_bad_baseline_fails_closed_naming_the_key(path: str, value: Any, named: str) -> None:
    # Before: NaN made no_regression vacuous and the gate passed (exit 0); -5 / 1e308 were accepted.
    # The current run here regresses badly (CRA 0, L 1e6): only a vacuous comparison could pass it.
    bad = _baseline(path, value)
    pol = Policy(regression=RegressionSpec())
    with pytest.raises(InputError, match=re.escape(named)) as exc:
        evaluate(report(cra=(0.0, 0.0, 0.0), clean=0.1, lip=1e6), pol, bad, baseline_source="last.json")
    message = str(exc.value)
    assert "\n" not in message and message.startswith("baseline last.json: ")
    with pytest.raises(InputError, match=re.escape(named)):  # also when it comes inside a gate JSON
        baseline_report({"schema_version": "1.0", "kind": "speccert-gate", "rules": [], "report": bad})


def test_baseline_lipschitz_times_growth_must_stay_finite() -> None:
    pol = Policy(regression=RegressionSpec(max_lipschitz_growth=1.5))
    with pytest.raises(InputError, match="not a finite number"):
        evaluate(report(lip=1e6), pol, report(lip=1.7e308))


def test_baseline_without_a_finite_lipschitz_bound_is_noted() -> None:
    res = evaluate(report(), Policy(regression=RegressionSpec()), report(lip=None))
    assert any("no finite Lipschitz bound" in n for n in res.notes)
    assert not any(r.metric == "no_regression.lipschitz_upper" for r in res.rules)


def test_valid_baseline_still_compares() -> None:
    res = evaluate(report(), Policy(regression=RegressionSpec()), report(lip=None))
    assert res.passed and len(res.rules) == 3
