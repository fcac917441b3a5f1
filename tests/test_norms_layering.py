"""The layout of speccert.norms (its package docstring): kernels know no method, no method module imports
another, and there is no import cycle inside the package. Every import statement counts, including
those inside functions (a cycle hidden in a function-level import is still a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from import_graph import cycles

from speccert.norms import load_methods

PACKAGE = "speccert.norms"
ROOT = Path(__file__).resolve().parents[1] / "speccert" / "norms"
CONTRACT = {f"{PACKAGE}.method", f"{PACKAGE}.auto", f"{PACKAGE}.catalog", PACKAGE}


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    """module -> the modules of `package` (its folder: `root`) that it imports anywhere in its body."""
    modules: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join([package, *(parts[:-1] if parts[-1] == "__init__" else parts)])] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                # `from speccert.norms import torus` imports the module speccert.norms.torus
                names = {f"{node.module}.{a.name}" for a in node.names}
                targets |= names & modules.keys()
                if names - modules.keys():
                    targets.add(node.module)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def method_modules() -> set[str]:
    return {type(m).__module__ for m in load_methods().values()}


GRAPH = import_graph()


def test_every_registered_method_lives_in_the_methods_package() -> None:
    assert method_modules() <= {m for m in GRAPH if m.startswith(f"{PACKAGE}.methods.")}


def test_no_import_cycle_inside_the_package() -> None:
    # The package's __init__ re-exports the public API: it imports the layers, nothing imports it back.
    inner = {m: deps - {PACKAGE} for m, deps in GRAPH.items()}
    assert cycles(inner) == []
    assert not [m for m, deps in GRAPH.items() if PACKAGE in deps and m != PACKAGE]


@pytest.mark.parametrize("module", sorted(method_modules()))
def test_no_method_imports_another(module: str) -> None:
    others = GRAPH[module] & (method_modules() - {module})
    assert not others, f"{module} imports method modules {sorted(others)}: move the shared part to a kernel"


def test_kernels_know_no_method() -> None:
    """Kernels (everything but the contract, the strategy and the methods) import neither a method nor the
    registry: they are mathematics over tensors and geometries."""
    methods_pkg = f"{PACKAGE}.methods"
    kernels = {m for m in GRAPH if m not in CONTRACT and not m.startswith(methods_pkg)}
    assert f"{PACKAGE}.torus" in kernels and f"{PACKAGE}.gram_chain" in kernels
    for k in sorted(kernels):
        bad = {d for d in GRAPH[k] if d in CONTRACT or d.startswith(methods_pkg)}
        assert not bad, f"kernel {k} imports {sorted(bad)}"


def test_the_cycle_finder_finds_a_function_level_cycle(tmp_path: Path) -> None:
    """The check is not vacuous: the old layout's fft <-> gram loop (one side inside a function) is caught."""
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "fft.py").write_text("def f():\n    from pkg.gram import g\n    return g\n")
    (tmp_path / "gram.py").write_text("from pkg.fft import f\n")
    assert cycles(import_graph(tmp_path, "pkg")) == [("pkg.fft", "pkg.gram")]
