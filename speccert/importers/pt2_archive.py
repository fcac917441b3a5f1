"""Read a `torch.export` archive (.pt2) with torch's own loader, minus its biggest fixed cost.

torch's deserialiser rebuilds the program's JSON into schema dataclasses, calling
`typing.get_type_hints(cls)` once per object: 24,000 calls for densenet121, 4 of its 5 load seconds on
2 cores, recomputing the same dozen answers. `load_exported` runs `torch.export.load` with that one
function memoised per schema class (the schema classes are frozen module-level dataclasses, so the
answer cannot change between calls). It changes nothing else: the archive is read, checked and
deserialised by torch, and if torch's internals move (the module or its `typing` reference is gone)
the plain loader runs unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import types
import typing
from collections.abc import Iterator
from typing import Any

import torch

_LOCK = threading.Lock()


def _serializer() -> Any:
    try:
        from torch._export.serde import serialize
    except ImportError:  # pragma: no cover - a torch without the module: nothing to speed up
        return None
    return serialize if getattr(serialize, "typing", None) is typing else None


@contextlib.contextmanager
def _memoised_type_hints() -> Iterator[None]:
    serialize = _serializer()
    schema_ns = vars(serialize.schema) if serialize is not None and hasattr(serialize, "schema") else None
    if serialize is None or schema_ns is None:
        yield
        return

    @functools.cache
    def hints(cls: type) -> dict[str, Any]:
        return typing.get_type_hints(cls, globalns=schema_ns)

    def get_type_hints(
        obj: Any, globalns: Any = None, localns: Any = None, include_extras: bool = False
    ) -> Any:
        if globalns is schema_ns and localns is None and not include_extras and isinstance(obj, type):
            return hints(obj)
        return typing.get_type_hints(obj, globalns, localns, include_extras)

    # A module-like view of `typing` that differs only in get_type_hints, seen by the serialiser alone.
    proxy = types.ModuleType("typing")
    proxy.__dict__.update(vars(typing))
    proxy.get_type_hints = get_type_hints  # type: ignore[attr-defined]
    with _LOCK:
        serialize.typing = proxy
        try:
            yield
        finally:
            serialize.typing = typing


def load_exported(path: str, extra_files: dict[str, Any] | None = None) -> torch.export.ExportedProgram:
    """`torch.export.load(path)`, with the deserialiser's type-hint lookups memoised; `extra_files`
    (name -> "") is filled with the archive's extra files of those names, as torch.export.load does."""
    with _memoised_type_hints():
        return torch.export.load(path, extra_files=extra_files)


__all__ = ["load_exported"]
