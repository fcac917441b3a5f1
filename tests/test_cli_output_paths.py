"""Output paths never destroy the user's files: an output that is one of the command's inputs, two
outputs on one path, and '-' for an option that writes a file are usage errors (exit 2) found before
any work, and the inputs are left byte for byte as they were (the audit sweep found `--json` equal to
the model, `--markdown` appending to the data and `--plot -` creating a file named "-")."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from speccert.cli.app import main
from tests.test_certify_cli import onnx_classifier


def model_and_data(d: Path) -> dict[str, Path]:
    """A 3-class ONNX classifier on [1, 4, 4] inputs and 20 labelled points, in folder `d`."""
    rng = np.random.default_rng(0)
    np.savez(d / "d.npz", x=rng.random((20, 1, 4, 4), dtype=np.float32), y=rng.integers(0, 3, 20))
    return {"dir": d, "data": d / "d.npz", "model": onnx_classifier(d / "m.onnx")}


def run_cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    """Exit code and stderr of `speccert ARGS`, run in this process."""
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def f(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    files = model_and_data(tmp_path_factory.mktemp("outputs"))
    files["policy"] = files["dir"] / "policy.toml"
    files["policy"].write_text(
        f'[gate.data]\npath = "{files["data"]}"\n[[gate.rule]]\nmetric = "clean_accuracy"\nmin = 0.0\n'
    )
    return files


_run = run_cli


def _snapshot(f: dict[str, Path]) -> dict[str, bytes]:
    return {k: p.read_bytes() for k, p in f.items() if p.is_file()}


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["inspect", "{model}", "--json", "{model}"], "MODEL"),
        (["norms", "{model}", "--json", "{model}"], "MODEL"),
        (["certify", "{model}", "--data", "{data}", "--json", "{data}"], "--data"),
        (["certify", "{model}", "--data", "{data}", "--plot", "{model}"], "MODEL"),
        (["gate", "{model}", "--policy", "{policy}", "--markdown", "{data}"], "[gate.data] path"),
        (["gate", "{model}", "--policy", "{policy}", "--junit", "{policy}"], "--policy"),
        (["gate", "{model}", "--policy", "{policy}", "--json", "{model}"], "MODEL"),
        (
            [
                "finetune",
                "{model}",
                "--data",
                "{data}",
                "--target",
                "clean>=0.1",
                "--out",
                "{dir}/o.onnx",
                "--json",
                "{data}",
            ],
            "--data",
        ),
    ],
)
def test_an_output_over_an_input_is_refused_and_the_input_kept(
    f: dict[str, Path], capsys: pytest.CaptureFixture[str], args: list[str], named: str
) -> None:
    before = _snapshot(f)
    code, err = _run(capsys, *(a.format(**f) for a in args))
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert f"is the {named} file" in err and "refusing to overwrite the input" in err
    assert _snapshot(f) == before


def test_a_baseline_is_an_input_too(f: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    base = f["dir"] / "base.json"
    assert (
        main(["certify", str(f["model"]), "--data", str(f["data"]), "--eps", "0.1", "--json", str(base)]) == 0
    )
    capsys.readouterr()
    kept = base.read_bytes()
    code, err = _run(capsys, "gate", f["model"], "--policy", f["policy"], "--baseline", base, "--json", base)
    assert code == 2 and "is the --baseline file" in err
    link = f["dir"] / "link.json"  # the same file under another name is the same file
    link.unlink(missing_ok=True)
    os.symlink(base, link)
    code, err = _run(capsys, "gate", f["model"], "--policy", f["policy"], "--baseline", base, "--junit", link)
    assert code == 2 and "is the --baseline file" in err
    assert base.read_bytes() == kept


def test_two_outputs_on_one_path_are_refused(f: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = f["dir"] / "r.json"
    code, err = _run(
        capsys, "gate", f["model"], "--policy", f["policy"], "--json", out, "--junit", f"{f['dir']}/./r.json"
    )
    assert code == 2 and "--json and --junit both write" in err and not out.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["certify", "{model}", "--data", "{data}", "--plot", "-"],
        ["gate", "{model}", "--policy", "{policy}", "--junit", "-"],
        ["gate", "{model}", "--policy", "{policy}", "--markdown", "-"],
    ],
)
def test_dash_is_stdout_only_for_json(
    f: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = _run(capsys, *(a.format(**f) for a in args))
    assert code == 2 and "only --json can write to stdout" in err
    assert list(tmp_path.iterdir()) == []  # no file named "-"
