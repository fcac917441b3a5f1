"""Progress in logs: where stderr is not a terminal (CI jobs, `2> log`) the long commands print a plain
line at most every SPECCERT_PROGRESS_EVERY seconds instead of a bar (which draws nothing there), and
the per-point certificates (local, crown) report their points as they go, not only per batch."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from speccert.bounds.certificate import Batch
from speccert.bounds.certificates._per_point import per_point_radii
from speccert.cli.progress import EVERY_ENV, LogLines, progress_every
from speccert.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
MLP = REPO / "models" / "mlp.onnx"
DATA = REPO / "models" / "data" / "fashion_mnist_test_1k.npz"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_log_lines_wait_for_the_interval_and_skip_repeats(capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    lines = LogLines("speccert certify", every=30.0, clock=clock)
    lines.tell("certify 0/100")  # at the start: a short run prints nothing
    clock.now += 29.0
    lines.tell("certify 10/100")
    assert capsys.readouterr().err == ""
    clock.now += 1.5
    lines.tell("local [bold]8[/bold]/100")  # user text (a node name) printed as written
    clock.now += 10.0
    lines.tell("local 16/100")  # within the interval of the last line
    clock.now += 3600.0
    lines.tell("local 16/100")
    lines.tell("local 16/100")  # the same text again: no second line
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "speccert certify: local [bold]8[/bold]/100 (0m 30s elapsed)",
        "speccert certify: local 16/100 (1h 00m elapsed)",
    ]


def test_counted_stages_say_the_time_left(capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    lines = LogLines("speccert certify", every=0.0, clock=clock)
    lines.count("local", 0, 48)  # no rate yet
    clock.now += 130.0
    lines.count("local", 16, 48)  # 16 points in 130 s: 32 left at that rate
    clock.now += 130.0
    lines.count("local", 48, 48)  # done: nothing left to estimate
    assert capsys.readouterr().err.splitlines() == [
        "speccert certify: local 0/48 (0m 00s elapsed)",
        "speccert certify: local 16/48, ~4m 20s left (2m 10s elapsed)",
        "speccert certify: local 48/48 (4m 20s elapsed)",
    ]


@pytest.mark.parametrize(("value", "every"), [(None, 30.0), ("0", 0.0), ("2.5", 2.5), ("inf", math.inf)])
def test_progress_every_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str | None, every: float
) -> None:
    if value is None:
        monkeypatch.delenv(EVERY_ENV, raising=False)
    else:
        monkeypatch.setenv(EVERY_ENV, value)
    assert progress_every() == every


@pytest.mark.parametrize("value", ["-1", "nan", "soon"])
def test_a_bad_interval_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(EVERY_ENV, value)
    with pytest.raises(UsageError, match=EVERY_ENV):
        progress_every()


def test_per_point_radii_tick_after_every_chunk() -> None:
    n = 20
    x = torch.randn(n, 3, dtype=torch.float64)
    y = torch.zeros(n, dtype=torch.int64)
    margins = torch.ones(n, 2, dtype=torch.float64)
    ticks: list[int] = []
    r = per_point_radii(
        Batch(x, y, torch.zeros(n, 2), margins),
        lambda xs, ys, ms, ks: xs[:, 0].abs(),
        chunk=8,
        tick=ticks.append,
    )
    assert ticks == [8, 16, 20]
    assert torch.equal(r[:, 1], x[:, 0].abs()) and bool(torch.isinf(r[:, 0]).all())


def _cli(*args: str, every: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, EVERY_ENV: every, "COLUMNS": "160"}
    return subprocess.run(
        [sys.executable, "-m", "speccert", *args], capture_output=True, text=True, env=env, timeout=600
    )


def test_certify_reports_the_local_points_in_a_log() -> None:
    res = _cli(
        "certify", str(MLP), "--data", str(DATA), "--limit", "4", "--certificate", "global,local",
        "--eps", "0.1", every="0",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("speccert certify: ")]
    assert any(line.startswith("speccert certify: local 4/4 (") for line in lines), res.stderr
    assert any(line.startswith("speccert certify: bounding layers ") for line in lines), res.stderr
    assert "Certified accuracy" in res.stdout  # the report itself is unchanged, on stdout


def test_short_runs_print_no_progress_lines_by_default() -> None:
    res = _cli("norms", str(MLP), every="")
    assert res.returncode == 0, res.stderr
    assert "elapsed)" not in res.stderr


def test_norms_gate_and_finetune_report_in_a_log(tmp_path: Path) -> None:
    norms = _cli("norms", str(MLP), every="0")
    assert norms.returncode == 0, norms.stderr
    assert "speccert norms: layer 1/" in norms.stderr
    gate = _cli("gate", str(MLP), "--data", str(DATA), "--limit", "16", "--max-lipschitz", "1e9", every="0")
    assert gate.returncode == 0, gate.stderr
    assert f"speccert gate {MLP}: certify 16/16 (" in gate.stderr
    with np.load(DATA) as d:
        np.savez(tmp_path / "small.npz", x=d["x"][:64], y=d["y"][:64])
    tune = _cli(
        "finetune", str(MLP), "--data", str(tmp_path / "small.npz"), "--target", "cra@0.5>=0.99",
        "--penalty", "lmt", "--epochs", "1", "--batch-size", "32", "--out", str(tmp_path / "tuned.onnx"),
        every="0",
    )  # fmt: skip
    assert tune.returncode == 1, tune.stderr  # the one epoch ends before the target holds
    assert "speccert finetune: epoch 1/1, step 1/" in tune.stderr


def test_a_bad_interval_fails_the_command_with_exit_2() -> None:
    res = _cli("certify", str(MLP), "--data", str(DATA), "--limit", "4", every="-5")
    assert res.returncode == 2
    assert EVERY_ENV in res.stderr and "Traceback" not in res.stderr
