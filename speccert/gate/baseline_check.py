"""A baseline is checked before it is compared with: the gate fails closed.

`no_regression` compares this run with numbers read from a file someone else wrote. A value the
comparison cannot use must stop the gate, never make a rule vacuous: NaN compares false both ways,
a negative or >1 accuracy moves the threshold `CRA_B - drop` out of [0, 1], and a huge Lipschitz
bound makes `L <= L_B * growth` hold for any model. So every value the gate reads from a baseline
is checked against the certify report schema (report.schema.json) and against its meaning:

    schema_version    "MAJOR.MINOR.PATCH" with this speccert's major version; kind "certify"
    certificate.n     an integer >= 1
    accuracies        finite, in [0, 1]; certified_accuracy[i] <= clean_accuracy (a certified point
                      is a correctly classified one) and non-increasing in eps (a larger ball); an
                      eps listed twice has one accuracy
    radii             finite, >= 0 (eps, median_radius; null = infinite where the schema allows it)
    lipschitz.upper   finite, >= 0, or null (no finite bound); lower <= upper

A failed check is an InputError (exit 4) of one line naming the key and the value.
"""

from __future__ import annotations

import math
import re
from typing import Any

from speccert.bounds.schema import SCHEMA_VERSION
from speccert.errors import InputError

CERTIFY_KIND = "certify"
_VERSION = re.compile(r"^([0-9]+)\.[0-9]+\.[0-9]+$")
_TOL = 1e-12  # accuracies are fractions k/n written as decimals: compare them with a little slack


def _name(src: str) -> str:
    return src if src.startswith("baseline") else f"baseline {src}"


def _bad(src: str, key: str, value: Any, want: str) -> InputError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return InputError(f"{_name(src)}: '{key}' must be {want}, got {shown}")


def _table(doc: dict[str, Any], key: str, src: str) -> dict[str, Any]:
    if key not in doc:
        raise InputError(f"{_name(src)}: missing key '{key}' (not a complete `speccert certify` report)")
    value = doc[key]
    if not isinstance(value, dict):
        raise _bad(src, key, value, "a table")
    return value


def _nonneg(v: Any, key: str, src: str, want: str = "a finite number >= 0") -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
        raise _bad(src, key, v, want)
    return float(v)


def _nullable(table: dict[str, Any], key: str, where: str, src: str) -> float | None:
    """A finite number >= 0 at `where.key`, or None for null (the report's "infinite")."""
    if key not in table:
        raise InputError(f"{_name(src)}: missing key '{where}.{key}'")
    v = table[key]
    return None if v is None else _nonneg(v, f"{where}.{key}", src, "a finite number >= 0 or null")


def _fraction(v: Any, key: str, src: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not (0.0 <= v <= 1.0):
        raise _bad(src, key, v, "an accuracy in [0, 1]")  # NaN fails 0 <= v too
    return float(v)


def _check_version(doc: dict[str, Any], src: str) -> None:
    version = doc.get("schema_version")
    m = _VERSION.match(version) if isinstance(version, str) else None
    if m is None:
        raise _bad(src, "schema_version", version, "a report schema version such as '1.0.0'")
    if m.group(1) != SCHEMA_VERSION.split(".")[0]:
        raise InputError(
            f"{_name(src)}: report schema {version} is not compatible with this speccert's "
            f"{SCHEMA_VERSION} (re-run the baseline with this version)"
        )
    if doc.get("kind") != CERTIFY_KIND:
        raise _bad(src, "kind", doc.get("kind"), f"'{CERTIFY_KIND}'")


def _check_certificate(cert: dict[str, Any], src: str) -> None:
    n = cert.get("n")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise _bad(src, "certificate.n", n, "an integer >= 1 (points certified)")
    clean = _fraction(cert.get("clean_accuracy"), "certificate.clean_accuracy", src)
    eps, cra = cert.get("eps"), cert.get("certified_accuracy")
    if not isinstance(eps, list) or not eps:
        raise _bad(src, "certificate.eps", eps, "a non-empty list of radii")
    if not isinstance(cra, list) or len(cra) != len(eps):
        raise _bad(
            src, "certificate.certified_accuracy", cra, f"a list of {len(eps)} accuracies (one per eps)"
        )
    pairs = []
    for i, (e, a) in enumerate(zip(eps, cra, strict=True)):
        radius = _nonneg(e, f"certificate.eps[{i}]", src)
        acc = _fraction(a, f"certificate.certified_accuracy[{i}]", src)
        if acc > clean + _TOL:
            raise InputError(
                f"{_name(src)}: 'certificate.certified_accuracy[{i}]' = {acc:g} exceeds clean_accuracy "
                f"{clean:g} (a certified point is a correctly classified one): the report is inconsistent"
            )
        pairs.append((radius, acc, i))
    for (e0, a0, _), (e1, a1, i1) in zip(sorted(pairs), sorted(pairs)[1:], strict=False):
        if e1 == e0 and abs(a1 - a0) > _TOL:
            raise InputError(
                f"{_name(src)}: 'certificate.certified_accuracy' gives eps {e0:g} twice, with {a0:g} and "
                f"{a1:g}: the report is inconsistent"
            )
        if e1 > e0 and a1 > a0 + _TOL:
            raise InputError(
                f"{_name(src)}: 'certificate.certified_accuracy[{i1}]' = {a1:g} at eps {e1:g} exceeds "
                f"{a0:g} at the smaller eps {e0:g}: the report is inconsistent"
            )
    _nullable(cert, "median_radius", "certificate", src)


def check_baseline(doc: dict[str, Any], src: str = "baseline") -> dict[str, Any]:
    """Raise InputError unless `doc` is a certify report whose values the gate can compare with."""
    _check_version(doc, src)
    for key in ("model", "environment"):
        if key in doc and not isinstance(doc[key], dict):
            raise _bad(src, key, doc[key], "a table")
    _table(doc, "model", src)
    _check_certificate(_table(doc, "certificate", src), src)
    lip = _table(doc, "lipschitz", src)
    upper = _nullable(lip, "upper", "lipschitz", src)
    lower = _nullable(lip, "lower", "lipschitz", src) if "lower" in lip else None
    if upper is not None and lower is not None and lower > upper * (1 + _TOL):
        raise InputError(
            f"{_name(src)}: 'lipschitz.lower' = {lower:g} exceeds 'lipschitz.upper' = {upper:g}: "
            "the report is inconsistent"
        )
    return doc
