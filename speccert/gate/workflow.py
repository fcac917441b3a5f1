"""`gate()`: certify a model under a policy and decide pass/fail, for CI pipelines.

    result = gate(model, policy)   # load -> certify(data, eps_all) -> evaluate rules (+ baseline)
    result.passed                  # all rules hold; result.exit_code is 0 (pass) or 1 (a rule failed)

Each rule is `value >= threshold` or `value <= threshold` over the certify report (see rules.py and
baseline.py); the result carries the full report, so one JSON (`GateResult.to_dict()`, schema
gate.schema.json, which references the certify report schema) holds everything a reviewer needs.
Same model file + same policy -> same numbers: the run is seeded (`policy.seed`), and the report records
the model's sha256, versions, device and methods, so a baseline comparison means something.

    >>> import speccert
    >>> from speccert.gate.policy import Policy, DataSpec, make_rule
    >>> p = Policy(data=DataSpec(path="models/data/fashion_mnist_test_1k.npz", limit=200),
    ...            rules=(make_rule("certified_accuracy", min=0.5, eps=0.25),))
    >>> speccert.gate("models/mlp.onnx", p).passed                 # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from speccert.errors import EXIT_FAILED, EXIT_OK, InputError, UsageError
from speccert.gate.baseline import baseline_report, comparison_notes, read_baseline, regression_rules
from speccert.gate.policy import COMMAND_LINE, POLICY_FILE, PYPROJECT, Policy, read_policy
from speccert.gate.rules import RuleResult, evaluate_rules

if TYPE_CHECKING:
    from speccert.bounds.sample_pass import Progress
    from speccert.ir import Graph

GATE_SCHEMA_VERSION = "1.0"
GATE_SCHEMA_FILE = Path(__file__).with_name("gate.schema.json")


@dataclass(frozen=True)
class GateResult:
    """Rule outcomes, the certify report they were measured on, and notes on the baseline comparison."""

    rules: tuple[RuleResult, ...]
    report: dict[str, Any]
    policy: Policy
    baseline: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rules)

    @property
    def failures(self) -> list[RuleResult]:
        return [r for r in self.rules if not r.passed]

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.passed else EXIT_FAILED

    def to_dict(self) -> dict[str, Any]:
        """The gate JSON: its own schema_version, the verdict, the rules, and the certify report."""
        return {
            "schema_version": GATE_SCHEMA_VERSION,
            "kind": "speccert-gate",
            "passed": self.passed,
            "exit_code": self.exit_code,
            "summary": {"rules": len(self.rules), "failed": len(self.failures)},
            "rules": [r.to_dict() for r in self.rules],
            "notes": list(self.notes),
            "baseline": self.baseline,
            "policy": self.policy.to_dict(),
            "seconds": round(self.seconds, 3),
            "report": self.report,
        }


def evaluate(
    report: dict[str, Any],
    policy: Policy,
    baseline: dict[str, Any] | None = None,
    *,
    baseline_source: str | None = None,
    seconds: float = 0.0,
) -> GateResult:
    """Pure: the policy's rules over a certify report dict, plus no_regression against `baseline`
    (a certify report dict, or a gate JSON dict) when the policy asks for it."""
    results = evaluate_rules(policy.rules, report)
    notes: list[str] = []
    info = None
    extra: dict[str, Any] = {}
    if policy.regression is not None:
        if baseline is None:
            raise UsageError(
                "no_regression needs a baseline report: set [gate.no_regression] baseline or pass --baseline"
            )
        base = baseline_report(baseline, baseline_source or "baseline")
        results += regression_rules(report, base, policy.regression)
        notes += comparison_notes(report, base)
        extra["baseline_report"] = base
        model = base.get("model") if isinstance(base.get("model"), dict) else {}
        info = {
            "path": baseline_source,
            "model_sha256": (model or {}).get("sha256"),
            "schema_version": base.get("schema_version"),
        }
    if not results:
        raise no_rules_error(policy)
    return GateResult(
        rules=tuple(results),
        report=report,
        policy=policy,
        baseline=info,
        notes=tuple(notes),
        seconds=seconds,
        extra=extra,
    )


def no_rules_error(policy: Policy) -> UsageError:
    """The gate has nothing to check: say where rules come from, and whether a policy file was read."""
    if policy.source is None:
        where = "the policy has no rules"
    elif policy.source == COMMAND_LINE:
        where = (
            f"no policy file found (no --policy, no ./{POLICY_FILE}, no ./{PYPROJECT} with "
            "[tool.speccert]) and no rule options given, so the gate has no rules"
        )
    else:
        where = f"the policy {policy.source} has no rules"
    return UsageError(
        f"{where}: add [[gate.rule]] tables or [gate.no_regression] to a policy, or options such as "
        "--min-cra 0.5@0.25 / --max-lipschitz 40"
    )


def gate(
    model: str | os.PathLike[str] | Graph,
    policy: Policy | str | os.PathLike[str],
    *,
    baseline: str | os.PathLike[str] | dict[str, Any] | None = None,
    weights: str | None = None,
    trust_pickle: bool = False,
    progress: Progress | None = None,
) -> GateResult:
    """Certify `model` on the policy's data at every radius its rules name, then evaluate the rules.

    `policy` is a Policy or a policy file path (speccert.toml / pyproject.toml). `baseline` (a report path
    or dict) overrides the policy's `[gate.no_regression] baseline`. Raises UsageError (bad policy),
    InputError (unreadable model/data/baseline), UnsupportedModelError; never prints (`progress`: as in
    speccert.bounds.certify).
    """
    t0 = time.perf_counter()
    if not isinstance(policy, Policy):
        policy = read_policy(policy)
    if not policy.rules and policy.regression is None:
        raise no_rules_error(policy)  # before any expensive work
    base_doc: dict[str, Any] | None = None
    base_src: str | None = None
    if policy.regression is not None:
        src = baseline if baseline is not None else policy.regression.baseline
        if src is None:
            raise UsageError(
                "no_regression needs a baseline report: set [gate.no_regression] baseline or pass --baseline"
            )
        if isinstance(src, dict):
            base_doc, base_src = src, "baseline"
        else:
            base_doc, base_src = read_baseline(src), os.fspath(src)
    if policy.data.path is None:
        raise UsageError("no data to certify on: set [gate.data] path in the policy or pass --data")
    report = run_certify(model, policy, weights=weights, trust_pickle=trust_pickle, progress=progress)
    return evaluate(report, policy, base_doc, baseline_source=base_src, seconds=time.perf_counter() - t0)


def run_certify(
    model: str | os.PathLike[str] | Graph,
    policy: Policy,
    *,
    weights: str | None = None,
    trust_pickle: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Load the model and data named by the policy and return `certify(...).to_dict()`, seeded."""
    import torch

    from speccert.bounds import CertifyOptions, certify
    from speccert.bounds.lipschitz import check_normalisation
    from speccert.data.idx import check_split_applies
    from speccert.importers import load
    from speccert.ir import Graph

    torch.manual_seed(policy.seed)
    device = policy.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {device!r}: no CUDA device is available on this machine")
    if isinstance(model, Graph):
        graph = model
    else:
        graph = load(model, policy.data.input_shape, weights=weights, trust_pickle=trust_pickle)
    assert policy.data.path is not None
    check_split_applies(policy.data.path, policy.data.split, "'gate.data.split' (or --split)")
    try:  # the library's check, naming the policy's keys (the gate has no --mean / --std)
        keys = ("'gate.data.mean'", "'gate.data.std'")
        check_normalisation(policy.data.mean, policy.data.std, graph.input_shape, keys)
    except UsageError as exc:
        raise UsageError(f"{policy.source or 'policy'}: {exc}") from None
    options = CertifyOptions(
        method=policy.method,
        device=device,
        second_order=policy.second_order,
        audit=policy.audit,
        seed=policy.seed,
        lower_bound=policy.lower_bound,
        refine_above=policy.refine_above,
    )
    result = certify(
        graph,
        policy.data.path,
        list(policy.eps_all),
        options,
        limit=policy.data.limit,
        mean=list(policy.data.mean) if policy.data.mean is not None else None,
        std=list(policy.data.std) if policy.data.std is not None else None,
        split=policy.data.split or "test",
        progress=progress,
    )
    report: dict[str, Any] = result.to_dict()
    return report


def gate_schema() -> dict[str, Any]:
    """The JSON schema of the gate JSON (it references the certify report schema for "report")."""
    schema: dict[str, Any] = json.loads(GATE_SCHEMA_FILE.read_text(encoding="utf-8"))
    return schema


def validate_gate(doc: dict[str, Any]) -> None:
    """Raise InputError (one line) if `doc` does not match gate.schema.json, including the embedded
    certify report against report.schema.json. Needs `jsonschema` (in the `test` extra)."""
    try:
        import jsonschema
        from referencing import Registry, Resource
    except ImportError:
        raise InputError(
            "validating a gate report needs the jsonschema package (pip install jsonschema)"
        ) from None
    from speccert.bounds.schema import load_schema

    report_schema = load_schema()
    registry: Registry[Any] = Registry().with_resource(
        report_schema["$id"], Resource.from_contents(report_schema)
    )
    validator = jsonschema.Draft202012Validator(gate_schema(), registry=registry)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        raise InputError(f"gate report does not match schema {GATE_SCHEMA_VERSION} at {where}: {e.message}")
    summary = doc["summary"]
    if summary["failed"] != sum(not r["passed"] for r in doc["rules"]) or doc["passed"] != (
        summary["failed"] == 0
    ):
        raise InputError("gate report is inconsistent: 'passed'/'summary' disagree with the rules")
