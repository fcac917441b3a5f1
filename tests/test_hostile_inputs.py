"""Hostile input files (issue 17 items 3, 5, 6): each is refused with the documented exit code and one
line on stderr, no traceback, within a memory and time cap, leaving no file behind.

The files are generated in tmp_path (the largest is ~250 KB on disk); tests/hostile_inputs.py has the
catalogue and the runner (one worker under RLIMIT_AS, a fork per case, peak RSS from wait4).
"""

from __future__ import annotations

import pytest
from hostile_inputs import CASES, Outcome, run_cases

PEAK_MB = 700  # the worker's imports (torch, onnx, onnxruntime) are ~250 MB of it
SECONDS = 60  # generous: a shared 2-core CI box; the slowest case takes ~2 s of CPU alone


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> list[Outcome]:
    return run_cases(CASES, tmp_path_factory.mktemp("hostile"), timeout=SECONDS)


@pytest.mark.slow
@pytest.mark.parametrize("i", range(len(CASES)), ids=[c.name for c in CASES])
def test_hostile_input_is_refused_cleanly(i: int, outcomes: list[Outcome]) -> None:
    case, o = CASES[i], outcomes[i]
    lines = [ln for ln in o.stderr.splitlines() if ln.strip()]
    assert o.code == case.expect, f"exit {o.code}, expected {case.expect}: {o.stderr[-500:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), o.stderr[-1000:]
    assert "Traceback" not in o.stderr and "internal error" not in o.stderr
    assert o.peak_mb < PEAK_MB, f"peak RSS {o.peak_mb:.0f} MB"
    assert o.seconds < SECONDS
    assert not o.stray, f"files left behind: {o.stray}"
