"""`no_regression`: compare a certify report with a baseline report (pure functions over dicts).

With baseline B and current report C, the rules are

    CRA_C(eps) >= CRA_B(eps) - max_cra_drop        for every radius eps in both reports
    L_C        <= L_B * max_lipschitz_growth        (L = proven Lipschitz upper bound)
    clean_C    >= clean_B - max_clean_drop          (only when max_clean_drop is set)

A baseline is a gate JSON (`speccert gate --json`, whose "report" holds the certify report) or a
certify report (`speccert certify --json`); its values are checked first (baseline_check.py: the gate
fails closed on NaN, out-of-range or missing values and on another schema). Differences that make the comparison less meaningful
(another model file, other data size, other method) are returned as notes, not errors: comparing a
retrained model with the last release is the point of a baseline.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from speccert.errors import InputError, UsageError
from speccert.gate.baseline_check import check_baseline
from speccert.gate.metrics import as_float, cra_at
from speccert.gate.policy import RegressionSpec
from speccert.gate.rules import RuleResult, compare

# A certify report of 60,000 points with per-point radii is about 10 MB; a larger file is not a report.
MAX_BASELINE_BYTES = 64 * 2**20


def read_baseline(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a baseline file and return the certify report inside it. Unreadable or not a report: InputError."""
    p = Path(path)
    if not p.is_file():
        raise InputError(
            f"baseline report not found: {p}" if not p.exists() else f"baseline is not a file: {p}"
        )
    try:
        size = p.stat().st_size
        if size > MAX_BASELINE_BYTES:
            raise InputError(
                f"baseline {p} is {size / 2**20:.0f} MiB; a speccert report is at most "
                f"{MAX_BASELINE_BYTES // 2**20} MiB"
            )
        doc = json.loads(p.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read baseline {p}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"baseline {p} is not valid JSON: {exc}") from None
    except _DuplicateKey as exc:
        raise InputError(
            f"baseline {p}: key '{exc}' appears twice in one object (which value counts is up to the "
            "reader): not a report speccert wrote"
        ) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise InputError(f"baseline {p} is not a speccert report ({str(exc).split(':')[0]})") from None
    except RecursionError:
        raise InputError(f"baseline {p} is nested too deeply to be a speccert report") from None
    return baseline_report(doc, str(p))


class _DuplicateKey(ValueError):
    """A JSON object with one key twice: Python keeps the last value, other readers the first."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise _DuplicateKey(key)
        doc[key] = value
    return doc


def baseline_report(doc: Any, src: str = "baseline") -> dict[str, Any]:
    """The certify report in a baseline document (gate JSON or certify JSON), checked (InputError)."""
    if isinstance(doc, dict) and isinstance(doc.get("report"), dict) and "rules" in doc:
        doc = doc["report"]
    if not isinstance(doc, dict) or not isinstance(doc.get("certificate"), dict):
        raise InputError(
            f"{src}: not a speccert report (expected the JSON of `speccert certify --json` "
            "or `speccert gate --json`, with a 'certificate' section)"
        )
    return check_baseline(doc, src)


def _model(report: dict[str, Any]) -> dict[str, Any]:
    m = report.get("model")
    return m if isinstance(m, dict) else {}


def _env(report: dict[str, Any]) -> dict[str, Any]:
    e = report.get("environment")
    return e if isinstance(e, dict) else {}


def comparison_notes(current: dict[str, Any], base: dict[str, Any]) -> list[str]:
    """What differs between the two runs besides the model's weights."""
    notes = []
    sha_c, sha_b = _model(current).get("sha256"), _model(base).get("sha256")
    if sha_c and sha_b and sha_c != sha_b:
        notes.append(f"baseline is from another model file (sha256 {str(sha_b)[:12]}, now {str(sha_c)[:12]})")
    elif sha_c and sha_c == sha_b:
        notes.append("baseline is from the same model file (same sha256)")
    if as_float(base.get("lipschitz", {}).get("upper")) is None:
        notes.append("the baseline has no finite Lipschitz bound (null): the Lipschitz bound is not compared")
    n_c, n_b = current["certificate"].get("n"), base["certificate"].get("n")
    if n_c is not None and n_b is not None and n_c != n_b:
        notes.append(f"baseline was certified on {n_b} points, this run on {n_c}")
    for key in ("method", "device", "seed"):
        a, b = _env(current).get(key), _env(base).get(key)
        if a is not None and b is not None and a != b:
            notes.append(f"baseline {key} was {b!r}, this run {a!r}")
    base_eps = {as_float(e) for e in base["certificate"].get("eps") or []}
    missing = [as_float(e) for e in current["certificate"].get("eps") or [] if cra_at(base, float(e)) is None]
    if missing and base_eps:
        notes.append(
            "radii not in the baseline, not compared: "
            + ", ".join(f"{e:g}" for e in missing if e is not None)
        )
    return notes


# Thresholds are float arithmetic on decimals (0.6 - 0.05 = 0.5499999...): a value exactly at the
# tolerance must pass, so each comparison gets this much relative slack.
_SLACK = 1e-12


def _compared(
    what: str,
    metric: str,
    bound: str,
    value: float | None,
    base: float,
    threshold: float,
    allowance: str,
    eps: float | None = None,
) -> RuleResult:
    """One no_regression rule: `value` against `threshold`, which was derived from the baseline `base`."""
    op = ">=" if bound == "min" else "<="
    ok = compare(value, bound, threshold - _SLACK if bound == "min" else threshold * (1 + _SLACK))
    shown = "missing" if value is None else f"{value:.6g}"
    return RuleResult(
        name=f"no_regression: {metric}" + (f"@{eps:g}" if eps is not None else ""),
        metric=f"no_regression.{metric}",
        op=op,
        threshold=threshold,
        value=value,
        passed=ok,
        message=f"{what}: {shown} vs baseline {base:.6g} ({allowance}, so {op} {threshold:.6g})",
        eps=eps,
        baseline=base,
    )


def _cra_rules(current: dict[str, Any], base: dict[str, Any], drop: float) -> list[RuleResult]:
    """CRA_C(eps) >= CRA_B(eps) - drop at every radius both reports hold."""
    results = []
    for e in current["certificate"].get("eps") or []:
        eps = as_float(e)
        b = cra_at(base, eps) if eps is not None else None
        if eps is None or b is None:
            continue
        allowance = f"may drop by at most {drop:g}"
        results.append(
            _compared(
                f"certified accuracy at eps {eps:g}",
                "certified_accuracy",
                "min",
                cra_at(current, eps),
                b,
                max(0.0, b - drop),
                allowance,
                eps,
            )
        )
    base_radii = [e for e in base["certificate"].get("eps") or [] if as_float(e) is not None]
    if not results and base_radii and current["certificate"].get("eps"):
        raise UsageError(
            "no_regression: the baseline shares no radius with this run (baseline eps: "
            + ", ".join(f"{as_float(e):g}" for e in base_radii)
            + "); certify at the same eps"
        )
    return results


def regression_rules(current: dict[str, Any], base: dict[str, Any], spec: RegressionSpec) -> list[RuleResult]:
    """One rule per radius shared by both reports, one for the Lipschitz bound, and one for clean accuracy
    when `spec.max_clean_drop` is set."""
    results = _cra_rules(current, base, spec.max_cra_drop)
    lb = as_float(base.get("lipschitz", {}).get("upper"))
    if lb is not None:  # None: the baseline has no finite bound, nothing to regress from (noted)
        growth = spec.max_lipschitz_growth
        threshold = lb * growth
        if not math.isfinite(threshold):  # a vacuous rule would pass any model: fail closed
            raise InputError(
                f"no_regression: baseline Lipschitz bound {lb:g} times max_lipschitz_growth "
                f"{growth:g} is not a finite number"
            )
        lc = as_float(current.get("lipschitz", {}).get("upper"))
        allowance = f"may grow by at most x{growth:g}"
        results.append(
            _compared("Lipschitz upper bound", "lipschitz_upper", "max", lc, lb, threshold, allowance)
        )
    cb = as_float(base["certificate"].get("clean_accuracy"))
    if spec.max_clean_drop is not None and cb is not None:
        cc = as_float(current["certificate"].get("clean_accuracy"))
        drop = spec.max_clean_drop
        allowance = f"may drop by at most {drop:g}"
        results.append(_compared("clean accuracy", "clean_accuracy", "min", cc, cb, cb - drop, allowance))
    return results
