"""Gate policies: the documented TOML shape parses, every bad key / value / file is a UsageError naming it."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from speccert.errors import InputError, UsageError
from speccert.gate.options import (
    COMMAND_LINE,
    parse_clean_option,
    parse_cra_option,
    parse_eps_option,
    with_overrides,
)
from speccert.gate.policy import MAX_POLICY_BYTES, Policy, discover_policy, make_rule, read_policy
from speccert.training.targets import parse_target

FULL = """
[gate]
eps = [0.1, 0.5]
method = "auto"
device = "cpu"
seed = 3
audit = 16

[gate.data]
path = "data/test.npz"
split = "test"
limit = 200
mean = [0.5]
std = [0.25]
input_shape = [1, 28, 28]

[[gate.rule]]
metric = "certified_accuracy"
eps = 0.25
min = 0.6

[[gate.rule]]
metric = "clean_accuracy"
min = 0.85

[[gate.rule]]
metric = "lipschitz_upper"
max = 40

[[gate.rule]]
metric = "max_layer_norm"
max = 3
name = "no layer above 3"

[gate.no_regression]
baseline = "reports/last.json"
max_cra_drop = 0.02
max_lipschitz_growth = 1.1
"""


def _write(tmp_path: Path, text: str, name: str = "speccert.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_full_example_parses(tmp_path: Path) -> None:
    pol = read_policy(_write(tmp_path, FULL))
    assert pol.eps_all == (0.1, 0.25, 0.5)  # the rule's radius joins the eps list
    assert [r.metric for r in pol.rules] == [
        "certified_accuracy",
        "clean_accuracy",
        "lipschitz_upper",
        "max_layer_norm",
    ]
    assert [r.bound for r in pol.rules] == ["min", "min", "max", "max"]
    assert pol.rules[0].eps == 0.25 and pol.rules[0].threshold == 0.6
    assert pol.rules[3].label == "no layer above 3"
    assert pol.rules[2].label == "lipschitz_upper <= 40"
    assert pol.data.limit == 200 and pol.data.mean == (0.5,) and pol.data.input_shape == (1, 28, 28)
    assert pol.seed == 3 and pol.audit == 16
    # paths in the file are relative to the file's folder, not to the current directory
    assert Path(pol.data.path or "") == tmp_path / "data" / "test.npz"
    assert pol.regression is not None
    assert Path(pol.regression.baseline or "") == tmp_path / "reports" / "last.json"
    assert pol.regression.max_cra_drop == 0.02 and pol.regression.max_lipschitz_growth == 1.1


def test_pyproject_tool_table(tmp_path: Path) -> None:
    text = '[project]\nname = "x"\n\n' + FULL.replace("[gate", "[tool.speccert.gate").replace(
        "[[gate.rule]]", "[[tool.speccert.gate.rule]]"
    )
    pol = read_policy(_write(tmp_path, text, "pyproject.toml"))
    assert len(pol.rules) == 4 and "tool.speccert" in (pol.source or "")
    assert discover_policy(tmp_path) == tmp_path / "pyproject.toml"
    _write(tmp_path, FULL)
    assert discover_policy(tmp_path) == tmp_path / "speccert.toml"  # speccert.toml wins


def test_pyproject_without_tool_table_is_an_error(tmp_path: Path) -> None:
    p = _write(tmp_path, '[project]\nname = "x"\n', "pyproject.toml")
    with pytest.raises(UsageError, match=r"\[tool.speccert\]"):
        read_policy(p)
    assert discover_policy(tmp_path) is None


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[gate]\nepss = [0.1]\n", "gate.epss"),
        ("[gate]\n[gate.data]\npth = 'x'\n", "gate.data.pth"),
        (
            "[gate]\n[[gate.rule]]\nmetric = 'clean_accuracy'\nmin = 0.5\nthreshold = 1\n",
            "gate.rule[0].threshold",
        ),
        ("[gate]\n[gate.no_regression]\ntolerance = 0.1\n", "gate.no_regression.tolerance"),
        ("[gates]\n", "gates"),
    ],
)
def test_unknown_key_is_named(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(UsageError, match=re.escape(f"unknown key '{key}'")):
        read_policy(_write(tmp_path, text))


def test_malformed_toml_reports_the_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"invalid TOML.*line 3"):
        read_policy(_write(tmp_path, "[gate]\neps = [0.1]\nmethod = \n"))


@pytest.mark.parametrize(
    ("text", "msg"),
    [
        ("[gate]\neps = ['a']\n", "gate.eps\\[0\\]' must be a finite number"),
        ("[gate]\neps = [-0.1]\n", "must be > 0"),
        ("[gate]\n[gate.data]\nlimit = 0\n", "gate.data.limit' must be > 0"),
        ("[gate]\n[gate.data]\nsplit = 'val'\n", "split' must be one of"),
        ("[gate]\n[[gate.rule]]\nmetric = 'lipschitz_upper'\nmin = 3\n", "takes 'max', not 'min'"),
        ("[gate]\n[[gate.rule]]\nmetric = 'certified_accuracy'\nmin = 0.5\n", "needs 'eps'"),
        ("[gate]\n[[gate.rule]]\nmetric = 'clean_accuracy'\nmin = 85\n", "fraction in \\[0, 1\\]"),
        ("[gate]\n[[gate.rule]]\nmetric = 'clean_accuracy'\neps = 0.1\nmin = 0.5\n", "takes no 'eps'"),
        ("[gate]\n[[gate.rule]]\nmetric = 'robustness'\nmin = 0.5\n", "unknown metric 'robustness'"),
        ("[gate]\n[[gate.rule]]\nmin = 0.5\n", "needs 'metric'"),
        ("[gate]\n[gate.no_regression]\nmax_lipschitz_growth = 0.9\n", "factor >= 1"),
        ("[gate]\nsecond_order = 'yes'\n", "true or false"),
    ],
)
def test_bad_values_are_usage_errors(tmp_path: Path, text: str, msg: str) -> None:
    with pytest.raises(UsageError, match=msg):
        read_policy(_write(tmp_path, text))


def test_missing_policy_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_policy(tmp_path / "nope.toml")


def test_command_line_rules_and_overrides() -> None:
    rule = parse_cra_option("0.5@0.25")
    assert (rule.metric, rule.bound, rule.threshold, rule.eps) == ("certified_accuracy", "min", 0.5, 0.25)
    for bad in ("0.5", "a@0.25", "0.5@x", "1.5@0.25"):
        with pytest.raises(UsageError):
            parse_cra_option(bad)
    assert parse_eps_option("0.1, 0.5") == (0.1, 0.5)
    with pytest.raises(UsageError):
        parse_eps_option("0.1,abc")
    base = Policy(rules=(make_rule("clean_accuracy", min=0.8),), eps=(0.1,))
    pol = with_overrides(
        base, rules=[rule], data="d.npz", limit=10, method="dense", baseline="b.json", max_cra_drop=0.0
    )
    assert [r.metric for r in pol.rules] == ["clean_accuracy", "certified_accuracy"]
    assert pol.eps_all == (0.1, 0.25) and pol.data.path == "d.npz" and pol.data.limit == 10
    assert pol.method == "dense" and pol.regression is not None
    assert pol.regression.baseline == "b.json" and pol.regression.max_cra_drop == 0.0
    assert pol.regression.max_lipschitz_growth == 1.05  # default kept
    with pytest.raises(UsageError, match="--limit"):
        with_overrides(base, limit=-1)
    with pytest.raises(UsageError, match="--split"):
        with_overrides(base, split="validation")
    assert with_overrides(base, seed=7, split="train").seed == 7
    assert with_overrides(base, split="train").data.split == "train"


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("gate.no_regression.max_cra_drop", "5", "must be <= 1"),  # a drop > 1 makes the rule vacuous
        ("gate.no_regression.max_cra_drop", "nan", "finite"),
        ("gate.no_regression.max_clean_drop", "1.5", "must be <= 1"),
        ("gate.no_regression.max_lipschitz_growth", "inf", "finite"),
        ("gate.seed", str(2**64), "64 bits"),  # torch.manual_seed overflowed: exit 5 before
        ("gate.data.limit", str(2**70), "64 bits"),
        ("gate.device", "'gpu'", "cpu, cuda, cuda:N or auto"),  # torch's own error was exit 5
        ("gate.device", "'[bold]x'", "got '\\[bold\\]x'"),
        ("gate.refine_above", "nan", "ratio upper / lower >= 1"),
        ("gate.refine_above", "0.5", "ratio upper / lower >= 1"),
        ("gate.refine_above", "'2'", "ratio upper / lower >= 1"),
    ],
)
def test_out_of_range_policy_values_are_refused(tmp_path: Path, key: str, value: str, match: str) -> None:
    table, _, leaf = key.rpartition(".")
    text = (
        f"[gate]\neps = [0.1]\n[{table}]\n{leaf} = {value}\n"
        if table != "gate"
        else f"[gate]\n{leaf} = {value}\n"
    )
    with pytest.raises(UsageError, match=match) as exc:
        read_policy(_write(tmp_path, text))
    assert key in str(exc.value) and "\n" not in str(exc.value)


def test_deeply_nested_policy_is_an_input_error_not_a_crash(tmp_path: Path) -> None:
    # tomllib recurses per nesting level: 5000 levels raised RecursionError (exit 5, a traceback)
    path = _write(tmp_path, "[gate]\nx = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(InputError, match="nested too deeply"):
        read_policy(path)


def test_huge_policy_is_refused_before_parsing(tmp_path: Path) -> None:
    # 10 MB of TOML took 58 s to parse; the size is checked first, so this returns at once
    path = tmp_path / "speccert.toml"
    path.write_text("[gate]\neps = [" + "0.1," * (2**18 + 10) + "0.1]\n")
    assert path.stat().st_size > MAX_POLICY_BYTES
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="a policy file is at most"):
        read_policy(path)
    assert time.perf_counter() - t0 < 1.0
    (tmp_path / "speccert.toml").unlink()
    (tmp_path / "pyproject.toml").write_text("[tool.x]\ny = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(InputError, match="nested too deeply"):
        discover_policy(tmp_path)


@pytest.mark.parametrize(("text", "value"), [("50%@0.25", 0.5), ("0.5@0.25", 0.5), ("100%@1", 1.0)])
def test_min_cra_accepts_percentages_like_finetune_targets(text: str, value: float) -> None:
    rule = parse_cra_option(text)
    acc, _, eps = text.partition("@")
    target = parse_target(f"cra@{eps}>={acc}")  # finetune's grammar: the same accuracy
    assert rule.threshold == value == target.value and rule.eps == target.eps == float(eps)
    assert parse_clean_option(acc).threshold == value


@pytest.mark.parametrize("acc", ["150%", "1.5", "-1%", "nan", "inf", "x%"])
def test_gate_and_finetune_refuse_the_same_accuracies(acc: str) -> None:
    with pytest.raises(UsageError, match="accuracy") as gate_err:
        parse_cra_option(f"{acc}@0.25")
    with pytest.raises(UsageError, match="accuracy"):
        parse_clean_option(acc)
    if acc not in ("nan", "inf", "x%"):  # finetune's grammar refuses these earlier, as malformed
        with pytest.raises(UsageError, match="accuracy") as ft_err:
            parse_target(f"cra@0.25>={acc}")
        assert str(gate_err.value).split(": ", 1)[1] == str(ft_err.value).split(": ", 1)[1]


@pytest.mark.parametrize(
    ("value", "parsed", "shown"), [("1.5", 1.5, 1.5), ("2", 2.0, 2.0), ("inf", math.inf, None)]
)
def test_refine_above_policy_key(tmp_path: Path, value: str, parsed: float, shown: float | None) -> None:
    """The same range as --refine-above; the gate JSON records it (null for inf: JSON has no infinity)."""
    pol = read_policy(_write(tmp_path, f"[gate]\nrefine_above = {value}\n"))
    assert pol.refine_above == parsed and pol.to_dict()["refine_above"] == shown
    assert read_policy(_write(tmp_path, "[gate]\n")).refine_above == 1.01  # the norms' default


def test_a_byte_order_mark_is_not_a_toml_error(tmp_path: Path) -> None:
    p = tmp_path / "speccert.toml"
    p.write_bytes("\ufeff[gate]\neps = [0.1]\n".encode())  # Notepad's UTF-8
    assert read_policy(p).eps == (0.1,)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"device": "gpu"}, "--device must be cpu, cuda, cuda:N or auto, got 'gpu'"),
        ({"max_cra_drop": math.nan}, "--max-cra-drop must be a finite number, got nan"),
        ({"max_lipschitz_growth": 0.5}, "--max-lipschitz-growth is a factor >= 1, got 0.5"),
        ({"limit": 0}, "--limit must be > 0, got 0"),
    ],
)
def test_command_line_values_are_named_by_their_option(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError) as exc:
        with_overrides(Policy(), **overrides)
    assert str(exc.value) == message
    assert "command line:" not in str(exc.value) and ".max'" not in str(exc.value)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: parse_cra_option("0.5@nan"),
            "--min-cra 0.5@nan: the radius must be a finite number, got nan",
        ),
        (lambda: parse_eps_option("0.1,inf"), "--eps must be a finite number, got inf"),
        (
            lambda: make_rule("lipschitz_upper", max=-1.0, where="--max-lipschitz", src=COMMAND_LINE),
            "--max-lipschitz must be >= 0, got -1.0",
        ),
    ],
)
def test_command_line_rules_name_the_option(make: Callable[[], object], message: str) -> None:
    with pytest.raises(UsageError) as exc:
        make()
    assert str(exc.value) == message


def test_norm_method_is_checked_when_the_policy_is_read(tmp_path: Path) -> None:
    """An unknown gate.method fails at parse time naming the key (not later, as a certify error about
    an unnamed method); --method names the option; every catalogued method is accepted."""
    with pytest.raises(
        UsageError, match=r"'gate\.method' 'nosuch' is not a norm method \(choose from auto, "
    ):
        read_policy(_write(tmp_path, '[gate]\neps = [0.1]\nmethod = "nosuch"\n'))
    pol = read_policy(_write(tmp_path, '[gate]\neps = [0.1]\nmethod = "fantastic4"\n'))
    assert with_overrides(pol, method="power").method == "power"
    assert with_overrides(pol).method == "fantastic4"
    with pytest.raises(UsageError, match=r"^--method '\[b\]x' is not a norm method"):
        with_overrides(pol, method="[b]x")
    from speccert.norms import method_names

    assert set(method_names()) | {"auto"} == {
        read_policy(_write(tmp_path, f'[gate]\neps = [0.1]\nmethod = "{m}"\n')).method
        for m in [*method_names(), "auto"]
    }
