"""Gate policies: what data to certify on, at which radii, and which rules the certificate must meet.

A policy is a TOML file (`speccert.toml`) whose only top-level table is `[gate]`, or the same content
under `[tool.speccert]` in a `pyproject.toml`:

    [gate]
    eps = [0.1, 0.25, 0.5]          # radii to certify at (rule radii are added automatically)
    method = "auto"                 # norm method, see `speccert norms --help`
    device = "cpu"
    seed = 0
    audit = 0                       # PGD-attack this many certified points (a broken certificate: exit 5)
    lower_bound = false             # also measure an empirical lower bound on L (slower; informative)
    refine_above = 1.01             # norms: `auto` refines a layer whose upper / lower is above this (inf: never)

    [gate.data]
    path = "models/data/fashion_mnist_test_1k.npz"   # relative to the policy file
    limit = 500

    [[gate.rule]]
    metric = "certified_accuracy"   # certified_accuracy, clean_accuracy, median_radius: `min`
    eps = 0.25                      # lipschitz_upper, max_layer_norm: `max`
    min = 0.6

    [gate.no_regression]            # compare with a baseline report (also `--baseline`)
    baseline = "reports/last.json"
    max_cra_drop = 0.02             # certified accuracy may drop by at most this (absolute)
    max_lipschitz_growth = 1.10     # the Lipschitz upper bound may grow by at most this factor

Every key is checked: an unknown key, a wrong type or a malformed file is a `UsageError` (exit 2)
naming the key (or the line, for TOML syntax errors). Parsing is pure: no model or data is read here.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speccert.errors import InputError, UsageError
from speccert.gate.rules import RuleSpec, make_rule
from speccert.gate.values import (
    COMMAND_LINE,
    boolean,
    check_keys,
    device,
    integer,
    named,
    nonempty_list,
    norm_method,
    number,
    numbers,
    refine_above,
    string,
)
from speccert.limits import REFINE_ABOVE

POLICY_FILE = "speccert.toml"
__all__ = [
    "COMMAND_LINE",
    "DataSpec",
    "Policy",
    "RegressionSpec",
    "discover_policy",
    "make_rule",
    "parse_policy",
    "parse_regression",
    "read_policy",
]
PYPROJECT = "pyproject.toml"
DEFAULT_MAX_CRA_DROP = 0.01
DEFAULT_MAX_LIPSCHITZ_GROWTH = 1.05


@dataclass(frozen=True)
class DataSpec:
    """Where the evaluation data comes from and how it is preprocessed before the model sees it."""

    path: str | None = None
    split: str | None = None
    limit: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_shape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class RegressionSpec:
    """`no_regression`: compared with a baseline report, certified accuracy at every shared radius may
    drop by at most `max_cra_drop` (absolute), the Lipschitz upper bound may grow by at most the factor
    `max_lipschitz_growth`, and (when set) clean accuracy may drop by at most `max_clean_drop`."""

    baseline: str | None = None
    max_cra_drop: float = DEFAULT_MAX_CRA_DROP
    max_lipschitz_growth: float = DEFAULT_MAX_LIPSCHITZ_GROWTH
    max_clean_drop: float | None = None


@dataclass(frozen=True)
class Policy:
    """A complete gate policy. `eps_all` is the sorted union of `eps` and the radii rules name."""

    data: DataSpec = field(default_factory=DataSpec)
    eps: tuple[float, ...] = ()
    rules: tuple[RuleSpec, ...] = ()
    regression: RegressionSpec | None = None
    method: str = "auto"
    device: str = "cpu"
    seed: int = 0
    second_order: bool = False
    audit: int = 0
    lower_bound: bool = False
    refine_above: float = REFINE_ABOVE
    source: str | None = None

    @property
    def eps_all(self) -> tuple[float, ...]:
        radii = set(self.eps) | {r.eps for r in self.rules if r.eps is not None}
        return tuple(sorted(radii))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["eps"] = list(self.eps_all)
        if math.isinf(self.refine_above):
            d["refine_above"] = None  # JSON has no infinity: null is "never refine", as in the certify report
        out: dict[str, Any] = _lists(d)
        return out


def _lists(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _lists(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_lists(v) for v in x]
    return x


_GATE_KEYS = {
    "eps",
    "method",
    "device",
    "seed",
    "second_order",
    "audit",
    "lower_bound",
    "refine_above",
    "data",
    "rule",
    "no_regression",
}
SPLITS = ("test", "train")
_DATA_KEYS = {f.name for f in dataclasses.fields(DataSpec)}
_RULE_KEYS = {"metric", "eps", "min", "max", "name"}
_REGRESSION_KEYS = {f.name for f in dataclasses.fields(RegressionSpec)}


def _relative(path: str, base: Path | None) -> str:
    """Paths in a policy file are relative to the file's folder; absolute paths stay as they are."""
    p = Path(os.path.expanduser(path))
    if base is None or p.is_absolute():
        return str(p)
    return os.path.normpath(base / p)


def _parse_data(d: Any, src: str, base: Path | None) -> DataSpec:
    if not isinstance(d, dict):
        raise UsageError(f"{src}: 'gate.data' must be a table ([gate.data])")
    check_keys(d, _DATA_KEYS, "gate.data", src)
    if "split" in d and d["split"] not in SPLITS:
        raise UsageError(f"{src}: 'gate.data.split' must be one of {', '.join(SPLITS)}, got {d['split']!r}")
    return DataSpec(
        path=_relative(string(d["path"], "gate.data.path", src), base) if "path" in d else None,
        split=string(d["split"], "gate.data.split", src) if "split" in d else None,
        limit=integer(d["limit"], "gate.data.limit", src, positive=True) if "limit" in d else None,
        mean=numbers(d["mean"], "gate.data.mean", src) if "mean" in d else None,
        std=numbers(d["std"], "gate.data.std", src, positive=True) if "std" in d else None,
        input_shape=tuple(
            integer(v, f"gate.data.input_shape[{i}]", src, positive=True)
            for i, v in enumerate(nonempty_list(d["input_shape"], "gate.data.input_shape", src))
        )
        if "input_shape" in d
        else None,
    )


def _parse_rules(raw_rules: Any, src: str) -> list[RuleSpec]:
    if not isinstance(raw_rules, list):
        raise UsageError(f"{src}: 'gate.rule' must be an array of tables ([[gate.rule]])")
    rules = []
    for i, r in enumerate(raw_rules):
        where = f"gate.rule[{i}]"
        if not isinstance(r, dict):
            raise UsageError(f"{src}: '{where}' must be a table")
        check_keys(r, _RULE_KEYS, where, src)
        if "metric" not in r:
            raise UsageError(f"{src}: '{where}' needs 'metric'")
        metric = string(r["metric"], f"{where}.metric", src)
        rules.append(
            make_rule(
                metric,
                min=r.get("min"),
                max=r.get("max"),
                eps=r.get("eps"),
                name=r.get("name"),
                where=where,
                src=src,
            )
        )
    return rules


def parse_policy(doc: dict[str, Any], src: str = "policy", base: Path | None = None) -> Policy:
    """Build a Policy from a parsed TOML document (the content of speccert.toml or [tool.speccert])."""
    for key in doc:
        if key != "gate":
            raise UsageError(f"{src}: unknown key '{key}' (a policy has one table, [gate])")
    gate = doc.get("gate")
    if not isinstance(gate, dict):
        raise UsageError(f"{src}: missing [gate] table")
    check_keys(gate, _GATE_KEYS, "gate", src)

    eps = numbers(gate["eps"], "gate.eps", src, positive=True) if "eps" in gate else ()
    method = norm_method(gate.get("method", "auto"), "gate.method", src)
    dev = device(gate.get("device", "cpu"), "gate.device", src)
    refine = refine_above(gate.get("refine_above", REFINE_ABOVE), "gate.refine_above", src)
    seed = integer(gate.get("seed", 0), "gate.seed", src)
    audit = integer(gate.get("audit", 0), "gate.audit", src)
    if audit < 0:
        raise UsageError(f"{src}: 'gate.audit' must be >= 0 (points to attack), got {audit}")
    second_order, lower_bound = (
        boolean(gate.get(k, False), f"gate.{k}", src) for k in ("second_order", "lower_bound")
    )

    data = _parse_data(gate["data"], src, base) if "data" in gate else DataSpec()
    rules = _parse_rules(gate.get("rule", []), src)

    regression = None
    if "no_regression" in gate:
        n = gate["no_regression"]
        if not isinstance(n, dict):
            raise UsageError(f"{src}: 'gate.no_regression' must be a table ([gate.no_regression])")
        regression = parse_regression(n, src, base)
    return Policy(
        data=data,
        eps=eps,
        rules=tuple(rules),
        regression=regression,
        method=method,
        device=dev,
        seed=seed,
        second_order=second_order,
        audit=audit,
        lower_bound=lower_bound,
        refine_above=refine,
        source=src,
    )


def parse_regression(n: dict[str, Any], src: str = "policy", base: Path | None = None) -> RegressionSpec:
    check_keys(n, _REGRESSION_KEYS, "gate.no_regression", src)
    w = "gate.no_regression"
    growth = number(
        n.get("max_lipschitz_growth", DEFAULT_MAX_LIPSCHITZ_GROWTH),
        f"{w}.max_lipschitz_growth",
        src,
        positive=True,
    )
    if growth < 1:
        raise UsageError(f"{named(f'{w}.max_lipschitz_growth', src)} is a factor >= 1, got {growth:g}")
    return RegressionSpec(
        baseline=_relative(string(n["baseline"], f"{w}.baseline", src), base) if "baseline" in n else None,
        max_cra_drop=number(  # accuracies are fractions: a drop above 1 would make the rule vacuous
            n.get("max_cra_drop", DEFAULT_MAX_CRA_DROP), f"{w}.max_cra_drop", src, nonneg=True, at_most=1.0
        ),
        max_lipschitz_growth=growth,
        max_clean_drop=number(n["max_clean_drop"], f"{w}.max_clean_drop", src, nonneg=True, at_most=1.0)
        if "max_clean_drop" in n
        else None,
    )


# A policy is a few hundred bytes; parsing is pure-Python (a 10 MB file took 58 s), so refuse big files
# before reading them. pyproject.toml files share the cap: theirs is generous for a project file.
MAX_POLICY_BYTES = 2**20


def _load_toml(p: Path) -> tuple[dict[str, Any], str]:
    """Parse a policy file (size-capped); InputError for unreadable, huge or absurdly nested files."""
    try:
        size = p.stat().st_size
        if size > MAX_POLICY_BYTES:
            raise InputError(f"policy {p} is {size:,} bytes; a policy file is at most {MAX_POLICY_BYTES:,}")
        text = p.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark (Windows editors) is not TOML
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read policy {p}: {exc}") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        where = "" if "line" in str(exc) else f" (line {text.count(chr(10)) + 1}, end of file)"
        raise UsageError(f"policy {p}: invalid TOML: {exc}{where}") from None
    except RecursionError:
        raise InputError(
            f"policy {p}: nested too deeply to be a policy (arrays or tables inside each other)"
        ) from None


def read_policy(path: str | os.PathLike[str]) -> Policy:
    """Read a policy file: `speccert.toml` (top-level [gate]) or a `pyproject.toml` ([tool.speccert.gate]).

    A missing, unreadable, oversized or too deeply nested file is an InputError (exit 4); bad TOML or
    bad content a UsageError (exit 2).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(
            f"policy file not found: {p}" if not p.exists() else f"policy path is not a file: {p}"
        )
    doc, _ = _load_toml(p)
    src = str(p)
    if p.name == PYPROJECT:
        tool = doc.get("tool", {})
        if not isinstance(tool, dict) or "speccert" not in tool:
            raise UsageError(f"{p}: no [tool.speccert] table")
        doc = tool["speccert"]
        if not isinstance(doc, dict):
            raise UsageError(f"{p}: 'tool.speccert' must be a table")
        src = f"{p} [tool.speccert]"
    return parse_policy(doc, src=src, base=p.resolve().parent)


def discover_policy(folder: str | os.PathLike[str] = ".") -> Path | None:
    """The policy used when none is given: ./speccert.toml, else ./pyproject.toml if it has [tool.speccert]."""
    base = Path(folder)
    if (base / POLICY_FILE).is_file():
        return base / POLICY_FILE
    pyproject = base / PYPROJECT
    if pyproject.is_file():
        try:
            doc, _ = _load_toml(pyproject)
        except UsageError:  # not valid TOML: not a policy (a broken pyproject is someone else's error)
            return None
        tool = doc.get("tool")
        if isinstance(tool, dict) and "speccert" in tool:
            return pyproject
    return None
