"""The layers of speccert read bottom to top with no import back up (docs/architecture.md):

    errors, registry, speccert (the root package, whose names load lazily)
    -> ir -> importers / exporters / norms / data -> bounds -> report / training -> gate
    -> cli, support (the README table generator) -> __main__

A package may import itself and packages of strictly lower layers (so packages side by side in one
layer stay independent of each other), and no package holds an import cycle among its own modules.
Every import counts, including those inside functions and under TYPE_CHECKING: a function-level
import is still an arrow. A small AST walk, no extra dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from import_graph import cycles

PKG = Path(__file__).resolve().parents[1] / "speccert"
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "registry", ""),  # "": the root package speccert/__init__.py
    ("limits",),  # the memory budget: reads errors only
    ("ir",),
    ("importers", "exporters", "norms", "data"),
    ("bounds",),
    ("report", "training"),
    ("gate",),  # speccert.gate: the CI gate workflow (its own package above the renderers)
    ("cli", "support"),
    ("__main__", "devtools"),  # devtools: maintainers' scripts (executed docs) that run the CLI
)
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every speccert import in the file, relative ones resolved."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from speccert.x import y` may import the module speccert.x.y: count the most specific one.
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return [(line, name) for line, name in out if name == "speccert" or name.startswith("speccert.")]


def _top(name: str) -> str:
    """The top-level part of speccert a module belongs to ('' for the root package)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def _existing(name: str) -> str:
    """The longest prefix of `name` that is a module or package of speccert (`from m import f` -> m)."""
    parts = name.split(".")
    while len(parts) > 1:
        rel = Path(PKG.parent, *parts)
        if rel.with_suffix(".py").is_file() or (rel / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    return "speccert"


FILES = sorted(PKG.rglob("*.py"))


def test_every_part_of_speccert_has_a_layer() -> None:
    tops = {_top(_module_name(f)) for f in FILES}
    assert tops - set(LAYER) == set(), "add the new package to LAYERS (and docs/architecture.md)"


def test_no_import_runs_back_up() -> None:
    bad = []
    for f in FILES:
        src = _top(_module_name(f))
        for line, name in _imports(f):
            dst = _top(_existing(name))
            if dst != src and LAYER[dst] >= LAYER[src]:
                bad.append(
                    f"{f.relative_to(PKG.parent)}:{line} imports {name} ({src or 'speccert'} -> {dst})"
                )
    assert bad == [], "imports that run back up (or sideways) the layers:\n" + "\n".join(bad)


def test_root_package_imports_nothing_eagerly() -> None:
    """speccert/__init__.py sits at the bottom because its names load on first use: it may not import
    any speccert module when it is itself imported."""
    tree = ast.parse((PKG / "__init__.py").read_text())
    eager = [
        n.lineno
        for n in tree.body
        if isinstance(n, (ast.Import, ast.ImportFrom))
        and any(a.name.startswith("speccert") for a in n.names)
        | (isinstance(n, ast.ImportFrom) and (n.module or "").startswith("speccert"))
    ]
    assert eager == []


def _graph(package: str) -> dict[str, set[str]]:
    files = [f for f in FILES if _top(_module_name(f)) == package]
    mods = {_module_name(f) for f in files}
    graph: dict[str, set[str]] = {}
    for f in files:
        me = _module_name(f)
        graph[me] = {t for _, n in _imports(f) if (t := _existing(n)) in mods and t != me}
    return graph


# Cycles allowed by name, package -> sets of modules a found cycle must lie inside. None is left: the
# registries load themselves, so no registry module imports its plug-ins (the penalties' cycle went this
# wave). Add an entry only with the reason beside it.
KNOWN_CYCLES: dict[str, list[set[str]]] = {}


def test_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [("a", "b", "c")]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", sorted({_top(_module_name(f)) for f in FILES} - {""}))
def test_no_import_cycle_inside_a_package(package: str) -> None:
    known = KNOWN_CYCLES.get(package, [])
    new = [c for c in cycles(_graph(package)) if not any(set(c) <= k for k in known)]
    assert new == [], f"import cycles in speccert.{package}: {new}"
