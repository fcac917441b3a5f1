"""Naming a Python model: 'package.module:factory' needs trained weights (or says it is untrained), and a
file path with a factory name gets the form explained instead of "model file not found"."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from speccert.cli.app import main

SOURCE = """
from torch import nn


def small_net():
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
"""


@pytest.fixture()
def pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "speccert_mine").mkdir()
    (tmp_path / "speccert_mine" / "__init__.py").write_text("")
    (tmp_path / "speccert_mine" / "mynet.py").write_text(SOURCE)
    monkeypatch.chdir(tmp_path)
    for mod in ("speccert_mine", "speccert_mine.mynet"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((12, 1, 4, 4), dtype=np.float32), y=rng.integers(0, 3, 12))
    return tmp_path


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


SPEC = "speccert_mine.mynet:small_net"


@pytest.mark.parametrize("command", ["certify", "inspect", "norms", "gate", "finetune"])
def test_factory_without_weights_is_a_usage_error(
    pkg: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = {
        "certify": ["--data", "d.npz"],
        "gate": ["--data", "d.npz", "--min-clean", "0"],
        "finetune": ["--data", "d.npz", "--out", "o.pt", "--target", "clean>=0.1"],
    }.get(command, [])
    code, out, err = _run(capsys, command, SPEC, "--input-shape", "1,4,4", *extra)
    assert code == 2 and "--weights" in _line(err) and "random" in _line(err)
    assert not (pkg / "o.pt").exists()


def test_random_weights_is_said_in_output_and_report(pkg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(
        capsys,
        "certify",
        SPEC,
        "--input-shape",
        "1,4,4",
        "--data",
        "d.npz",
        "--random-weights",
        "--json",
        "r.json",
    )
    assert code == 0, err
    assert "random initialisation" in err
    assert json.loads((pkg / "r.json").read_text())["model"]["weights"] == "random_init"


def test_trained_weights_need_no_flag(pkg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).state_dict(), pkg / "w.pt")
    code, _, err = _run(
        capsys, "certify", SPEC, "--input-shape", "1,4,4", "--data", "d.npz", "--weights", "w.pt"
    )
    assert code == 0 and "random" not in err


@pytest.mark.parametrize("spec", ["speccert_mine/mynet.py:small_net", "speccert_mine/mynet:small_net"])
def test_path_with_factory_explains_the_dotted_form(
    pkg: Path, spec: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, "inspect", spec, "--input-shape", "1,4,4")
    line = _line(err)
    assert code == 2 and "'speccert_mine.mynet:small_net'" in line and "not found" not in line


OUTPUTS = {  # command: [(option, extra args)]
    "certify": [("--json", []), ("--plot", [])],
    "inspect": [("--json", [])],
    "norms": [("--json", [])],
    "gate": [
        ("--json", ["--min-clean", "0"]),
        ("--junit", ["--min-clean", "0"]),
        ("--markdown", ["--min-clean", "0"]),
    ],
    "finetune": [("--json", ["--out", "o.pt", "--target", "clean>=0.1"])],
    "bench norms": [("--json", ["--no-resnet"])],
}


@pytest.mark.parametrize(
    ("command", "option", "extra"), [(c, o, e) for c, opts in OUTPUTS.items() for o, e in opts]
)
def test_output_into_missing_folder_is_refused_before_the_work(
    pkg: Path, command: str, option: str, extra: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing folder is exit 4 with one line, before any model is even loaded: the model named
    here does not exist, so a later check would have failed with 'not found' instead."""
    data = [] if command in ("inspect", "norms", "bench norms") else ["--data", "d.npz"]
    model = [] if command == "bench norms" else ["nothere.onnx"]
    target = str(pkg / "no_such_folder" / "out.file")
    code, _, err = _run(capsys, *command.split(), *model, *data, option, target, *extra)
    line = _line(err)
    assert code == 4 and option in line and "does not exist" in line


def test_finetune_out_creates_its_folder_but_not_into_a_file(
    pkg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (pkg / "afile").write_text("")
    code, _, err = _run(
        capsys,
        "finetune",
        "nothere.onnx",
        "--data",
        "d.npz",
        "--out",
        "afile/sub/o.onnx",
        "--target",
        "clean>=0.1",
    )
    assert code == 4 and "--out" in _line(err)
    code, _, err = _run(
        capsys,
        "finetune",
        "nothere.onnx",
        "--data",
        "d.npz",
        "--out",
        "new/sub/o.onnx",
        "--target",
        "clean>=0.1",
    )
    assert code == 4 and "model file not found" in _line(err)  # got past the output check
