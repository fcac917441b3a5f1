"""A reader that closes stdout early (`speccert gate ... | head -1`) does not change the exit code.

Before: click turned the BrokenPipeError into exit 1, which `set -o pipefail` reads as "gate failed",
for a gate that passed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GATE = ["gate", "models/mlp.onnx", "--data", "models/data/fashion_mnist_test_1k.npz", "--limit", "100"]


def run_with_closed_stdout(*args: str) -> tuple[int, str]:
    """Run `python -m speccert ARGS` with a stdout pipe whose reader has already gone."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "speccert", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err.decode()


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["inspect", "models/mlp.onnx"], 0),
        ([*GATE, "--min-clean", "0.5"], 0),
        ([*GATE, "--min-clean", "1.0", "--max-layer-norm", "0.01"], 1),
    ],
)
def test_exit_code_is_the_commands_own_when_the_reader_left(args: list[str], code: int) -> None:
    rc, err = run_with_closed_stdout(*args)
    assert rc == code, err
    assert "Traceback" not in err and "Exception ignored" not in err
