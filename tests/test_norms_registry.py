"""The norm-method registry loads itself; auto, CLI help and docs are generated from it and stay current."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from speccert.cli import norm_methods
from speccert.cli.app import main
from speccert.errors import EXIT_USAGE
from speccert.norms import load_methods, method_names
from speccert.norms.catalog import CATALOG_JSON, DOCS_BEGIN, DOCS_END, catalog_json, docs_table
from speccert.registry import Registry

REPO = Path(__file__).resolve().parents[1]


def test_load_package_imports_every_module_sorted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Modules register in name order whatever order the files were written in; `_` modules are skipped;
    a second load is a no-op (no duplicate-key error)."""
    pkg = tmp_path / "regpkg_demo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from speccert.registry import Registry\nREG = Registry('demo')\n")
    for name in ("zeta", "alpha", "mid", "_helper"):
        (pkg / f"{name}.py").write_text(f"from regpkg_demo import REG\nREG.add({name!r}, {name!r})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from regpkg_demo import REG  # type: ignore[import-not-found]

    reg: Registry[str, str] = REG
    assert reg.load_package("regpkg_demo") is reg
    assert reg.keys() == ["alpha", "mid", "zeta"]
    reg.load_package("regpkg_demo")
    assert len(reg) == 3
    for name in ("regpkg_demo", "regpkg_demo.alpha", "regpkg_demo.mid", "regpkg_demo.zeta"):
        sys.modules.pop(name)  # the demo package lives in tmp_path: forget it


def test_every_method_module_registers_a_method() -> None:
    """Each module of speccert/norms/methods/ is one registered method, named once (by its decorator)."""
    folder = REPO / "speccert" / "norms" / "methods"
    modules = sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")
    methods = load_methods()
    assert sorted(type(m).__module__.rsplit(".", 1)[1] for m in methods.values()) == modules
    for name, m in methods.items():
        assert m.name == name and m.kinds and m.summary


def test_auto_names_no_method() -> None:
    """auto's strategy comes from the roles the methods declare: no method name is written in auto.py."""
    tree = ast.parse((REPO / "speccert" / "norms" / "auto.py").read_text())
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert not strings & set(load_methods().keys())


def test_catalog_and_docs_table_are_current() -> None:
    assert CATALOG_JSON.read_text() == catalog_json(), "run `python -m speccert.norms.catalog`"
    text = (REPO / "docs" / "norms.md").read_text()
    block = text[text.index(DOCS_BEGIN) : text.index(DOCS_END) + len(DOCS_END)]
    assert block == docs_table(), (
        "docs/norms.md methods table is stale: run `python -m speccert.norms.catalog`"
    )
    assert json.loads(CATALOG_JSON.read_text())["methods"][0]["name"] == "auto"


def test_cli_choices_and_help_come_from_the_registry() -> None:
    assert norm_methods.choices() == method_names()
    text = norm_methods.method_help()
    for name in method_names():
        assert name in text
    assert "[" not in text  # typer renders help as rich markup: a bracket would swallow text


def test_norms_help_lists_every_method_without_importing_torch() -> None:
    code = (
        "import sys; from speccert.cli.app import main; rc = main(['norms', '--help']); "
        "print('torch' in sys.modules, rc)"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )
    assert res.stdout.strip().splitlines()[-1] == "False 0", res.stdout + res.stderr
    help_text = " ".join(res.stdout.split())
    for name in method_names():
        assert name in help_text
    assert "a proven bracket, lower <= norm <= upper" in help_text  # no text swallowed as markup


def test_unknown_method_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["norms", str(REPO / "models" / "mlp.onnx"), "--method", "svd"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert "'svd' is not a norm method" in " ".join(err.split()) and "lanczos" in err


def test_library_refuses_an_unknown_method_with_the_cli_words() -> None:
    """layer_norms (callers that bypass the CLI) runs the same catalogue check as --method and the gate."""
    from speccert.errors import UsageError
    from speccert.importers import load
    from speccert.norms import layer_norms

    graph = load(str(REPO / "models" / "mlp.onnx"))
    with pytest.raises(UsageError, match=r"^method 'svd' is not a norm method \(choose from auto, .*lanczos"):
        layer_norms(graph, method="svd")
    assert layer_norms(graph, method="lanczos")  # every catalogued method passes the check
