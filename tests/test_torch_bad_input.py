"""Bad PyTorch input: each case gives one clear SpeccertError (right exit code), never a traceback,
and a pickle that would run code when unpickled is never unpickled."""

from __future__ import annotations

import builtins
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from speccert.errors import InputError, InternalError, UnsupportedModelError, UsageError
from speccert.importers import load
from speccert.importers.torch_import import check_faithful, from_module, load_factory, load_torch_file
from speccert.ir.ops import Opaque

FACTORY_SOURCE = """
from torch import nn


def mlp():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def broken():
    raise ValueError("no such variant")


def not_a_module():
    return 42
"""


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Evil:
    """Unpickling this creates the marker file: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (builtins.open, (str(self.marker), "w"))


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "speccert", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI entry point in-process (same code path as the console script, without a new interpreter)."""
    from speccert.cli.app import main

    code = main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, captured.out, captured.err)


def _one_clean_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) >= 1 and lines[0].startswith("error:"), proc.stderr
    return " ".join(lines)  # rich may wrap one long line


@pytest.fixture()
def factory_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "speccert_userfac.py").write_text(FACTORY_SOURCE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "speccert_userfac", raising=False)
    return tmp_path


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_code_running_pickle_is_refused_and_never_runs(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save(Evil(marker), path)
    else:
        with open(path, "wb") as f:
            pickle.dump(Evil(marker), f)
    assert not marker.exists()
    with pytest.raises(InputError, match="--trust-pickle"):
        load_torch_file(path, (4,))
    assert not marker.exists()
    if writer == "pickle.dump":
        return  # one real console-script run below is enough
    proc = _cli("inspect", str(path), "--input-shape", "4")
    assert proc.returncode == 4, proc.stderr
    assert "--trust-pickle" in _one_clean_line(proc)
    assert not marker.exists()


def test_state_dict_given_as_model_points_to_factory(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(InputError, match="state_dict.*module:factory"):
        load(path, (3,))


def test_factory_needs_input_shape(factory_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UsageError, match="--input-shape"):
        load("speccert_userfac:mlp")
    proc = _main(capsys, "inspect", "speccert_userfac:mlp")
    assert proc.returncode == 2
    assert "--input-shape" in _one_clean_line(proc)


def test_factory_from_working_folder_and_wrong_shape(factory_dir: Path) -> None:
    g = load_factory("speccert_userfac:mlp", None, (4,))
    assert [n.op_type for n in g.nodes] == ["Linear", "Activation", "Linear"]
    with pytest.raises(UsageError, match="does not accept input shape"):
        load_factory("speccert_userfac:mlp", None, (5,))


def test_state_dict_with_wrong_keys_names_them(factory_dir: Path) -> None:
    sd = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).state_dict()
    sd["extra.weight"] = torch.zeros(1)
    del sd["2.bias"]
    torch.save(sd, factory_dir / "w.pt")
    with pytest.raises(InputError, match=r"missing 2\.bias.*unexpected extra\.weight"):
        load_factory("speccert_userfac:mlp", factory_dir / "w.pt", (4,))
    sd2 = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).state_dict()
    torch.save(sd2, factory_dir / "w2.pt")
    with pytest.raises(InputError, match=r"2\.weight.*size mismatch|size mismatch.*2\.weight"):
        load_factory("speccert_userfac:mlp", factory_dir / "w2.pt", (4,))


def test_missing_weights_file(factory_dir: Path) -> None:
    with pytest.raises(InputError, match="weights file not found"):
        load_factory("speccert_userfac:mlp", factory_dir / "nope.pt", (4,))


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("speccert_no_such_pkg.nets:make", "cannot import 'speccert_no_such_pkg.nets'"),
        ("speccert_userfac:nothing", "has no callable 'nothing'"),
        ("speccert_userfac:broken", "raised ValueError: no such variant"),
        ("speccert_userfac:not_a_module", "returned int, not a torch.nn.Module"),
    ],
)
def test_bad_factory_specs(factory_dir: Path, spec: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        load_factory(spec, None, (4,))


def test_missing_module_through_cli(factory_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proc = _main(capsys, "inspect", "speccert_no_such_pkg.nets:make", "--input-shape", "4")
    assert proc.returncode == 4
    assert "cannot import" in _one_clean_line(proc)


def test_nan_weights_are_named(factory_dir: Path) -> None:
    sd = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).state_dict()
    sd["2.weight"][1, 3] = float("nan")
    torch.save(sd, factory_dir / "nan.pt")
    g = load_factory("speccert_userfac:mlp", factory_dir / "nan.pt", (4,))  # imports faithfully (NaN = NaN)
    with pytest.raises(InputError, match=r"2\.weight"):
        g.check_finite()


def test_pt2_input_shape_from_archive_and_wrong_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).eval()
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(m, (torch.randn(2, 1, 6, 6),)), str(path))
    assert load(path).input_shape == (1, 6, 6)
    assert load(path, (1, 6, 6)).input_shape == (1, 6, 6)
    with pytest.raises(UsageError, match="does not fit"):
        load(path, (1, 7, 7))
    proc = _main(capsys, "inspect", str(path), "--input-shape", "3,6,6")
    assert proc.returncode == 2 and "does not fit" in _one_clean_line(proc)


def test_torchscript_needs_input_shape(tmp_path: Path) -> None:
    path = tmp_path / "m.ts"
    torch.jit.script(nn.Sequential(nn.Linear(3, 2))).save(str(path))
    with pytest.raises(UsageError, match="--input-shape"):
        load(path)
    with pytest.raises(UsageError, match="does not accept input shape"):
        load(path, (4,))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_files(tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(nn.Linear(3, 2), (torch.randn(2, 3),)), str(good))
    bad = tmp_path / "bad.pt2"
    data = good.read_bytes()
    bad.write_bytes(
        {"truncate": data[: len(data) // 2], "garbage": b"not a model at all", "empty": b""}[damage]
    )
    with pytest.raises(InputError):
        load(bad)
    proc = _main(capsys, "inspect", str(bad))
    assert proc.returncode == 4
    _one_clean_line(proc)


def test_missing_file() -> None:
    with pytest.raises(InputError, match="not found"):
        load_torch_file("/nonexistent/model.pt2")


class _Unsupported(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sign(self.l(x)) + x * x


def test_unsupported_ops_are_all_reported_at_once() -> None:
    with pytest.raises(UnsupportedModelError) as info:
        from_module(_Unsupported(), (3,))
    assert [(op, node) for op, node, _ in info.value.problems] == [
        ("aten.sign.default", "sign"),
        ("aten.mul.Tensor", "mul"),
    ]
    assert "product of two input-dependent tensors" in str(info.value)
    assert info.value.exit_code == 3


def test_allow_unsupported_keeps_opaque_nodes_that_run() -> None:
    m = _Unsupported().eval()
    g = from_module(m, (3,), allow_unsupported=True)
    assert [n.name for n in g.unsupported()] == ["sign", "mul"]
    assert all(isinstance(n.op, Opaque) for n in g.unsupported())
    x = torch.randn(4, 3)
    torch.testing.assert_close(g.forward(x), m(x))


def test_data_dependent_control_flow_is_refused(tmp_path: Path) -> None:
    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:
                return x * 2
            return x

    with pytest.raises(UnsupportedModelError, match="control flow"):
        from_module(Branchy(), (3,))
    path = tmp_path / "branchy.ts"
    torch.jit.script(Branchy()).save(str(path))
    with pytest.raises(UnsupportedModelError):
        load(path, (3,))


def test_several_inputs_refused() -> None:
    class Two(nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return x + y

    path_ep = torch.export.export(Two(), (torch.randn(2, 3), torch.randn(2, 3)))
    from speccert.importers.aten_ops import exported_to_graph

    with pytest.raises(UnsupportedModelError, match="2 inputs"):
        exported_to_graph(path_ep, (3,), 2, allow_unsupported=False)


def test_faithfulness_check_catches_a_wrong_graph() -> None:
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    g = from_module(m, (3,))
    with torch.no_grad():
        g.nodes[0].op.bias[0] += 1e-2  # type: ignore[attr-defined, index]
    with pytest.raises(InternalError, match="not faithful"):
        check_faithful(g, m)


def test_pt2_with_dynamic_spatial_dims_needs_input_shape(tmp_path: Path) -> None:
    m = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3)
    ).eval()
    h = torch.export.Dim("h", min=4, max=32)
    ep = torch.export.export(
        m, (torch.randn(2, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim("b"), 2: h, 3: h},)
    )
    path = tmp_path / "dyn.pt2"
    torch.export.save(ep, str(path))
    with pytest.raises(UsageError, match="dynamic input dimensions.*--input-shape"):
        load(path)
    g = load(path, (1, 10, 10))
    x = torch.randn(3, 1, 10, 10)
    torch.testing.assert_close(g.forward(x), m(x))
    with pytest.raises(UsageError, match="does not accept input shape"):
        load(path, (1, 40, 40))  # outside the archive's range for h


def test_inspect_marks_unsupported_nodes_with_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sign.pt2"
    torch.export.save(torch.export.export(_Unsupported().eval(), (torch.randn(2, 3),)), str(path))
    proc = _main(capsys, "inspect", str(path))
    assert proc.returncode == 3
    assert "aten.sign.default" in proc.stdout and "aten.mul.Tensor" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_checkpoint_dict_and_shared_weights(factory_dir: Path) -> None:
    ref = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    torch.save({"epoch": 3, "model_state_dict": ref.state_dict()}, factory_dir / "ckpt.pt")
    g = load_factory("speccert_userfac:mlp", factory_dir / "ckpt.pt", (4,))
    x = torch.randn(3, 4)
    torch.testing.assert_close(g.forward(x), ref(x))

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.l(torch.tanh(self.l(x)))

    g = from_module(Tied(), (4,))
    linears = [n.op for n in g.nodes if n.op_type == "Linear"]
    assert len(linears) == 2 and linears[0].weight is linears[1].weight  # type: ignore[attr-defined]


def test_reflect_padding_and_stray_circular_padding() -> None:
    with pytest.raises(UnsupportedModelError, match="aten.pad.default node 'pad': reflect padding"):
        from_module(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), (1, 5, 5))

    class Stray(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(x, (1, 1), mode="circular") * 2

    with pytest.raises(UnsupportedModelError, match="circularly padded"):
        from_module(Stray(), (2, 5))
    g = from_module(Stray(), (2, 5), allow_unsupported=True)
    assert [(n.name, n.op_type) for n in g.nodes] == [("pad", "Opaque"), ("mul", "Affine")]
    x = torch.randn(3, 2, 5)
    torch.testing.assert_close(g.forward(x), Stray()(x))


def _tamper_pt2(good: Path, evil: Path, marker: Path, where: str) -> None:
    """Copy a real .pt2, putting a code-running pickle where torch's reader would unpickle it."""
    import io
    import json
    import zipfile

    buf = io.BytesIO()
    torch.save(Evil(marker), buf)
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(evil, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if where == "example inputs" and item.filename.endswith("sample_inputs/model.pt"):
                data = buf.getvalue()
            if where == "weights" and item.filename.endswith("model_weights_config.json"):
                config = json.loads(data)
                for entry in config["config"].values():
                    entry["use_pickle"] = True
                data = json.dumps(config).encode()
            if where == "weights" and item.filename.endswith("weights/weight_0"):
                data = buf.getvalue()
            zout.writestr(item, data)


@pytest.mark.parametrize("where", ["example inputs", "weights"])
def test_pt2_with_code_running_pickle_is_refused_and_never_runs(
    tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """torch.export.load itself would unpickle these with weights_only=False (torch 2.13)."""
    good, evil, marker = tmp_path / "good.pt2", tmp_path / "evil.pt2", tmp_path / "PWNED"
    torch.export.save(torch.export.export(nn.Linear(3, 2), (torch.randn(2, 3),)), str(good))
    _tamper_pt2(good, evil, marker, where)
    with pytest.raises(InputError, match="pickled Python objects.*--trust-pickle"):
        load(evil)
    assert not marker.exists()
    proc = _main(capsys, "inspect", str(evil))
    assert proc.returncode == 4 and "--trust-pickle" in _one_clean_line(proc)
    assert not marker.exists()
    assert torch.load is not None and load(good).input_shape == (3,)  # the guard is lifted afterwards
