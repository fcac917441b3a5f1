"""The gate is a workflow above the reports: report/ never imports the gate, the certifier or the
importers, and the gate package never imports the CLI (layer order ir -> importers / norms -> bounds
-> report / training -> gate -> cli)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "speccert"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def _hits(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    files = sorted((PKG / folder).rglob("*.py"))
    assert files
    return [
        f"{f.name} imports {name}"
        for f in files
        for name in sorted(_imports(f))
        if name.startswith(forbidden)
    ]


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("report", ("speccert.gate", "speccert.bounds.certify.", "speccert.importers", "speccert.cli")),
        ("gate", ("speccert.cli",)),
    ],
)
def test_no_import_runs_back_up(folder: str, forbidden: tuple[str, ...]) -> None:
    assert _hits(folder, forbidden) == []
