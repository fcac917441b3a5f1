"""User and literal text is printed as written: no rich markup or emoji codes are ever applied to it.

Bracketed names (`net[best].onnx`, a folder `x[/v2]` that is an unbalanced closing tag, `:smile:`) go
through every command's title and error paths; each must appear verbatim and never change the exit code
(a MarkupError used to exit 1, which CI reads as "gate failed").
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from speccert.cli.app import main
from speccert.cli.console import styled
from tests.test_certify_cli import onnx_classifier

NAMES = ["net[best].onnx", "x[/v2]/m.onnx", "a[bold]:smile:[/bold].onnx"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("brackets")
    base = onnx_classifier(d / "base.onnx")
    for name in NAMES:
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(base, d / name)
    rng = np.random.default_rng(0)
    np.savez(d / "ok.npz", x=rng.random((30, 1, 4, 4), dtype=np.float32), y=rng.integers(0, 3, 30))
    corpus = d / "corpus[/c]"
    (corpus / "m[red]x").mkdir(parents=True)
    shutil.copy(base, corpus / "m[red]x" / "model.onnx")
    np.save(corpus / "m[red]x" / "x.npy", rng.random((10, 1, 4, 4), dtype=np.float32))
    np.save(corpus / "m[red]x" / "y.npy", rng.integers(0, 3, 10))
    return {"dir": d, "data": d / "ok.npz", "corpus": corpus}


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_styled_escapes_values_only() -> None:
    text = styled("[bold red]error:[/] {} and {}", "net[best].onnx", "[/v2] :smile:")
    assert text.plain == "error: net[best].onnx and [/v2] :smile:"
    assert text.spans and text.spans[0].style == "bold red"


@pytest.mark.parametrize("name", NAMES)
def test_titles_show_model_names_verbatim(
    setup: dict[str, Path], name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model = str(setup["dir"] / name)
    code, out, _ = _run(["inspect", model], capsys)
    assert code == 0 and model in out
    code, out, _ = _run(["norms", model], capsys)
    assert code == 0 and f"{model}: per-layer" in out
    code, out, err = _run(["gate", model, "--data", setup["data"], "--min-clean", "0"], capsys)
    assert code == 0 and f"speccert gate: {model}" in out, err


@pytest.mark.parametrize("name", NAMES)
def test_error_lines_show_user_text_verbatim(
    setup: dict[str, Path], name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(setup["dir"] / "gone" / name)
    data = str(setup["data"])
    for cmd in (
        ["inspect", missing],
        ["norms", missing],
        ["certify", missing, "--data", data],
        ["gate", missing, "--data", data, "--min-clean", "0"],
        [
            "finetune",
            missing,
            "--data",
            data,
            "--out",
            str(setup["dir"] / "o.onnx"),
            "--target",
            "clean>=0.1",
        ],
    ):
        code, _, err = _run(cmd, capsys)
        line = _one_error_line(err)
        assert code == 4 and missing in line, (cmd, line)
    model = str(setup["dir"] / name)
    code, _, err = _run(["certify", model, "--data", str(setup["dir"] / "[/d].npz")], capsys)
    assert code == 4 and "[/d].npz" in _one_error_line(err)


def test_values_in_brackets_are_printed(setup: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    model, data = str(setup["dir"] / NAMES[0]), str(setup["data"])
    code, _, err = _run(["certify", model, "--data", data, "--eps", "inf"], capsys)
    assert code == 2 and "got [inf]" in _one_error_line(err)


def test_plot_hint_names_the_extra(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    model, data = str(setup["dir"] / NAMES[0]), str(setup["data"])
    code, _, err = _run(["certify", model, "--data", data, "--plot", str(setup["dir"] / "p.png")], capsys)
    assert code == 2 and "pip install 'speccert[plot]'" in _one_error_line(err)


def test_bench_names_verbatim(setup: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    corpus = str(setup["corpus"])
    code, out, err = _run(["bench", "norms", "--no-resnet", "--corpus", corpus], capsys)
    assert code == 0 and "m[red]x: value" in out, err
    code, out, err = _run(["bench", "certify", "--no-bundled", "--corpus", corpus], capsys)
    assert code == 0 and "m[red]x" in out, err
    code, _, err = _run(["bench", "certify", "--corpus", corpus + "[/missing]"], capsys)
    assert code == 4 and "[/missing]" in _one_error_line(err)
