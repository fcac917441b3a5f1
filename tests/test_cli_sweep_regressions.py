"""Regressions from the audit sweep (a demanding user's hostile and unusual inputs): each case was a
traceback-free but wrong outcome before (exit 5 for a user's mistake, a silently ignored option, every
model skipped with exit 0, a backslash in a printed name) and is now one line with the documented code."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from speccert.bounds.options import CertifyOptions
from speccert.errors import UsageError
from speccert.gate.policy import parse_policy
from speccert.limits import check_refine_above
from tests.test_certify_cli import onnx_classifier
from tests.test_cli_output_paths import model_and_data, run_cli


@pytest.fixture(scope="module")
def f(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    files = model_and_data(tmp_path_factory.mktemp("sweep"))
    files["garbage"] = files["dir"] / "garbage.pt"
    files["garbage"].write_bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8).tobytes())
    corpus = files["dir"] / "corpus" / "[v2] net"
    corpus.mkdir(parents=True)
    onnx_classifier(corpus / "model.onnx")
    return files


_run = run_cli


def _one_error_line(err: str) -> str:
    assert err.startswith("error: ") and err.count("\n") == 1, repr(err)
    return err


@pytest.mark.parametrize("command", ["certify", "finetune"])
def test_a_seed_past_64_bits_is_a_usage_error(
    f: dict[str, Path], capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """torch.manual_seed raised 'Overflow when unpacking long long': exit 5 before."""
    args = ["--data", f["data"], "--seed", str(2**70)]
    if command == "finetune":
        args += ["--target", "clean>=0.1", "--out", f["dir"] / "o.onnx"]
    code, err = _run(capsys, command, f["model"], *args)
    assert code == 2 and "--seed must be an integer that fits in 64 bits" in _one_error_line(err)
    assert not (f["dir"] / "o.onnx").exists()


@pytest.mark.parametrize("value", [float("nan"), 0.5, -1.0])
def test_refine_above_has_one_check_for_cli_library_and_policy(value: float) -> None:
    """One torch-free check (speccert.limits) behind --refine-above, CertifyOptions and the policy key."""
    with pytest.raises(UsageError) as lib:
        CertifyOptions(refine_above=value).validate()
    with pytest.raises(UsageError) as cli:
        check_refine_above(value)
    with pytest.raises(UsageError) as pol:
        parse_policy({"gate": {"refine_above": value}}, src="p.toml")
    body = f"is a ratio upper / lower >= 1 (inf: never refine), got {value!r}"
    assert str(lib.value) == str(cli.value) == f"--refine-above {body}"
    assert str(pol.value) == f"p.toml: 'gate.refine_above' {body}"


def test_refine_above_on_the_command_line_is_refused_before_loading(
    f: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _run(capsys, "norms", f["dir"] / "missing.onnx", "--refine-above", "0.5")
    assert code == 2 and "--refine-above is a ratio" in _one_error_line(err)  # not "file not found"


@pytest.mark.parametrize("command", ["inspect", "norms", "certify"])
def test_weights_with_a_model_file_is_refused_not_ignored(
    f: dict[str, Path], capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """--weights applies to 'package.module:factory' specs; with a file it was silently ignored."""
    extra = ["--data", f["data"]] if command == "certify" else []
    code, err = _run(capsys, command, f["model"], "--weights", f["garbage"], *extra)
    assert code == 2 and "only a 'package.module:factory' model takes a state_dict" in _one_error_line(err)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["norms", "--resnet-size", "0"], 2, "--resnet-size is the input side in pixels, >= 1, got 0"),
        (["norms", "--resnet-size", "-5"], 2, "--resnet-size is the input side"),  # exit 5 before
        (["norms", "--resnet-size", "8", "--resnet-weights", "{garbage}"], 4, "not a torchvision resnet18"),
        (["certify", "--limit", "0"], 2, "--limit must be a positive number of samples, got 0"),
        (["certify", "--eps", "nan", "--no-bundled"], 2, "--eps values must be finite and > 0"),
        (["certify", "--bundled-eps", "nan"], 2, "--bundled-eps values must be finite and > 0"),
    ],
)
def test_bench_options_are_checked_before_any_model_runs(
    f: dict[str, Path], capsys: pytest.CaptureFixture[str], args: list[str], code: int, message: str
) -> None:
    """Before: a NaN radius or --limit 0 skipped every model with a note and exit 0; a negative
    --resnet-size or a garbage weights file was an internal error (exit 5)."""
    got, err = _run(capsys, "bench", *(a.format(**f) for a in args), "--corpus", f["dir"] / "corpus")
    assert got == code and message in _one_error_line(err)


def test_bench_prints_bracketed_names_as_written(
    f: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """`escape()` before a console that parses no markup printed 'benchmarking \\[v2] net'."""
    code, err = _run(capsys, "bench", "norms", "--no-resnet", "--corpus", f["dir"] / "corpus")
    assert code == 0 and "benchmarking [v2] net ..." in err and "\\[" not in err


def test_ctrl_c_says_interrupted_and_exits_130(
    f: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Typer turns KeyboardInterrupt into a silent Exit(130): the run just stopped, with nothing said."""
    from speccert.cli import inspect_cmd

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(inspect_cmd, "load_model", interrupted)
    code, err = _run(capsys, "inspect", f["model"])
    assert code == 130 and err == "interrupted\n"


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("suffix", [".pt2", ".pt"])
def test_an_unreadable_torch_file_is_exit_4(
    f: dict[str, Path], capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    """Reading /proc/self/mem from offset 0 fails with EIO: an unreadable file even for root (chmod 000
    is not, and the sweep ran as root). It was an internal error, exit 5."""
    link = f["dir"] / f"io{suffix}"
    link.unlink(missing_ok=True)
    link.symlink_to("/proc/self/mem")
    code, err = _run(capsys, "inspect", link)
    assert code == 4 and f"cannot read {link}" in _one_error_line(err)


def test_an_os_error_anywhere_is_exit_4_naming_the_file(
    f: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from speccert.cli import inspect_cmd

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", "/data/x.onnx")

    monkeypatch.setattr(inspect_cmd, "load_model", denied)
    code, err = _run(capsys, "inspect", f["model"])
    assert code == 4 and err == "error: /data/x.onnx: Permission denied\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["certify", "", "--data", "{data}"], "MODEL: empty path"),  # was "model path is a folder"
        (["inspect", ""], "MODEL: empty path"),
        (["certify", "{model}", "--data", ""], "--data: empty path"),  # read the current folder as images
        (["gate", "{model}", "--data", "", "--min-clean", "0.1"], "--data: empty path"),
    ],
)
def test_an_empty_path_is_a_usage_error(
    f: dict[str, Path], capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    """An unset shell variable ("$MODEL") gives an empty argument: Path("") is the current folder."""
    code, err = _run(capsys, *(a.format(**f) for a in args))
    assert code == 2 and message in _one_error_line(err)


def test_json_output_is_strict_json(capsys: pytest.CaptureFixture[str]) -> None:
    """NaN / Infinity (a layer with no finite bound, an unmeasured ratio) are written as null: Python's
    default wrote the tokens NaN and Infinity, which jq and JavaScript refuse."""
    import json

    from speccert.cli.common import write_json

    write_json({"a": float("inf"), "b": [float("nan"), 1.5], "c": np.float32("nan"), "d": np.float64(2)}, "-")
    text = capsys.readouterr().out
    assert json.loads(text, parse_constant=lambda t: pytest.fail(f"non-JSON token {t}")) == {
        "a": None,
        "b": [None, 1.5],
        "c": None,
        "d": 2.0,
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--eps", "0.1,,0.2"], "--eps has an empty item"),
        (["--eps", "0.1,"], "--eps has an empty item"),
        (["--eps", "0.1,0.25,0.1"], "--eps lists 0.1 more than once"),
        (["--certificate", "local,local"], "--certificate lists local more than once"),
        (["--certificate", "global,,pairwise"], "--certificate has an empty item"),
    ],
)
def test_certify_list_options_refuse_empty_and_repeated_items(args: list[str], message: str) -> None:
    """A value lost between two commas, or one given twice, was silently dropped or run twice."""
    from speccert.cli.certify_cmd import parse_eps, parse_floats, parse_kinds

    assert parse_floats("0.1, 0.25", "--eps") == parse_floats("0.1 0.25", "--eps") == [0.1, 0.25]
    assert parse_eps("0.5,0.1") == [0.5, 0.1] and parse_kinds("default") is None
    with pytest.raises(UsageError, match=re.escape(message)):
        if args[0] == "--eps":
            parse_eps(args[1])
        else:  # a repeated kind is refused by CertifyOptions.validate, for every caller
            CertifyOptions(certificates=parse_kinds(args[1])).validate()


def test_certify_cli_exits_2_on_a_repeated_eps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = model_and_data(tmp_path)
    code, err = run_cli(capsys, "certify", files["model"], "--data", files["data"], "--eps", "0.1,0.1")
    assert code == 2 and "--eps lists 0.1 more than once" in err


def test_certify_split_is_refused_where_it_would_be_ignored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--split chooses in a folder of IDX files; given with an .npz it was silently ignored."""
    from speccert.data.idx import holds_idx

    files = model_and_data(tmp_path)
    code, err = run_cli(capsys, "certify", files["model"], "--data", files["data"], "--split", "train")
    assert code == 2 and "--split = 'train'" in err and "leave it out" in err
    code, _ = run_cli(capsys, "certify", files["model"], "--data", files["data"], "--limit", "5")
    assert code == 0
    idx = tmp_path / "idx"
    idx.mkdir()
    assert not holds_idx(idx) and not holds_idx(files["data"])
    (idx / "t10k-images-idx3-ubyte.gz").write_bytes(b"")
    assert holds_idx(idx)


def test_certify_cli_exits_2_on_a_repeated_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = model_and_data(tmp_path)
    cmd = ("certify", files["model"], "--data", files["data"], "--certificate", "global,global")
    code, err = run_cli(capsys, *cmd)
    assert code == 2 and "--certificate lists global more than once" in err


def test_certify_checks_the_norm_method_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same check and words as `norms --method` and the gate's gate.method (speccert.limits)."""
    files = model_and_data(tmp_path)
    code, err = run_cli(
        capsys, "certify", files["model"], "--data", tmp_path / "missing.npz", "--method", "[b]svd"
    )
    assert code == 2 and "--method '[b]svd' is not a norm method (choose from auto," in err
