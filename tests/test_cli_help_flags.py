"""`--help` shows a flag as a flag: no `<bool>` value placeholder after options that take no value."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

COMMANDS = [
    [],
    ["inspect"],
    ["norms"],
    ["certify"],
    ["finetune"],
    ["gate"],
    ["bench", "norms"],
    ["bench", "certify"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "speccert")
def test_flags_show_no_value_placeholder(command: list[str]) -> None:
    env = {**os.environ, "COLUMNS": "160", "TERM": "dumb"}
    text = subprocess.run(
        [sys.executable, "-m", "speccert", *command, "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    flagged = [line for line in text.splitlines() if "<bool>" in line and "--help" not in line]
    assert flagged == [], "\n".join(flagged)
