"""ATen-op converters for the PyTorch importer: one small function per core ATen op, registered in
`ATEN_OPS` by its overload name. Importing this package registers them all: `load_package` imports
every module of it (base.py and walk.py register nothing), so a new op is one new module here."""

from speccert.importers.aten_ops.base import ATEN_OPS, ConvertContext, TensorValue, Unsupported, aten_op
from speccert.importers.aten_ops.walk import exported_to_graph

ATEN_OPS.load_package(__name__)


def support_table() -> list[tuple[str, str]]:
    """(ATen overload name, what the converter accepts: its docstring's first line), sorted: the source
    of the supported-operator table in docs/pytorch.md."""
    rows = []
    for name, fn in ATEN_OPS.items():
        doc = (fn.__doc__ or "").strip().splitlines()
        rows.append((name, doc[0] if doc else ""))
    return sorted(rows)


def support_markdown() -> str:
    """The support table as Markdown."""
    lines = ["| ATen op | converted as |", "|---|---|"]
    lines += [f"| `{name}` | {doc.replace('|', '/')} |" for name, doc in support_table()]
    return "\n".join(lines) + "\n"


__all__ = [
    "ATEN_OPS",
    "support_markdown",
    "support_table",
    "ConvertContext",
    "TensorValue",
    "Unsupported",
    "aten_op",
    "exported_to_graph",
]
