"""Baseline files the JSON parser accepts but the gate must not trust: it fails closed (exit 4, one line).

The audit sweep found a baseline with a 5000-digit integer raising ValueError (exit 5, "use
sys.set_int_max_str_digits()"), and one whose object repeated "lipschitz" read with the last value
(Python's choice; other JSON readers take the first): a file that says two things is not evidence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gate_report_dicts import report

from speccert.errors import InputError
from speccert.gate.baseline import read_baseline


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "last.json"
    p.write_text(text)
    return p


def test_a_repeated_key_is_refused_wherever_it_is(tmp_path: Path) -> None:
    good = json.dumps(report())
    assert read_baseline(_write(tmp_path, good))["lipschitz"]["upper"] == 12.0
    top = good[:-1] + ', "lipschitz": {"upper": 1e9, "lower": 1.0}}'  # a second, looser bound
    inner = good.replace('"upper": 12.0', '"upper": 12.0, "upper": 1e9')
    for text, key in ((top, "lipschitz"), (inner, "upper")):
        with pytest.raises(InputError, match=f"key '{key}' appears twice") as exc:
            read_baseline(_write(tmp_path, text))
        assert "\n" not in str(exc.value)


def test_an_integer_too_long_to_convert_is_an_input_error(tmp_path: Path) -> None:
    text = json.dumps(report()).replace('"seed": 0', '"seed": 1' + "0" * 5000)
    with pytest.raises(InputError, match="is not a speccert report") as exc:
        read_baseline(_write(tmp_path, text))
    assert "set_int_max_str_digits" not in str(exc.value)


def test_one_radius_listed_twice_with_one_accuracy_is_fine(tmp_path: Path) -> None:
    """`certify --eps 0.1,0.1` writes the radius twice with the same accuracy: still a valid baseline."""
    doc = report(eps=(0.1, 0.1, 0.5), cra=(0.8, 0.8, 0.3))
    assert read_baseline(_write(tmp_path, json.dumps(doc)))["certificate"]["eps"] == [0.1, 0.1, 0.5]
