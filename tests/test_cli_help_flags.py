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


def _help(command: list[str], columns: int) -> str:
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "dumb"}
    run = [sys.executable, "-m", "speccert", *command, "--help"]
    return subprocess.run(run, capture_output=True, text=True, env=env, check=True).stdout


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "speccert")
def test_flags_show_no_value_placeholder(command: list[str]) -> None:
    text = _help(command, 160)
    flagged = [line for line in text.splitlines() if "<bool>" in line and "--help" not in line]
    assert flagged == [], "\n".join(flagged)


@pytest.mark.parametrize("group", [[], ["bench"]], ids=lambda c: " ".join(c) or "speccert")
def test_command_list_has_no_mid_sentence_breaks(group: list[str]) -> None:
    """On a terminal wide enough for every summary, each command's entry in the list is one line (the
    docstrings' own line breaks used to show up there mid-sentence)."""
    text = _help(group, 600)
    lines = text[text.index("Commands") :].splitlines()[1:]
    panel = lines[: next(i for i, line in enumerate(lines) if line.startswith("╰"))]
    assert len(panel) >= 2
    for line in panel:
        name = line.strip("│ ").split(" ")[0]
        assert name.isidentifier(), f"continuation line in the command list: {line.strip()!r}"
