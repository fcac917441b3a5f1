"""The command-line tool's OpenMP waiting (speccert.cli._bounded_spin): set before torch loads, never over
the user's own choice."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = (
    "import os; import speccert.cli.app; "
    "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"
)


def _probe(**env: str) -> list[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**base, **env}, capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def test_unset_gets_bounded_spin() -> None:
    assert _probe() == ["1000", "PASSIVE"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"OMP_WAIT_POLICY": "ACTIVE"}, ["None", "ACTIVE"]),
        ({"OMP_WAIT_POLICY": "PASSIVE"}, ["None", "PASSIVE"]),
        ({"GOMP_SPINCOUNT": "0"}, ["0", "None"]),
    ],
)
def test_user_choice_wins(env: dict[str, str], expected: list[str]) -> None:
    assert _probe(**env) == expected


def test_set_before_torch_loads() -> None:
    """The app module imports torch lazily: the variables are in place when the OpenMP runtime starts."""
    probe = "import sys; import speccert.cli.app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
