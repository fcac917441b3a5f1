"""Typed registries filled by decorators; registering a key twice is an error (STYLE.md rule 1).

A registry whose entries live one per module of a package fills itself: `load_package` imports every
module of the package (sorted by name), each module's decorator registers its entry, and callers never
keep a list of modules by hand.

    >>> PLUGINS: Registry[str, type] = Registry("plugins")
    >>> @PLUGINS.register("double")
    ... class Double: ...
    >>> PLUGINS.get("double") is Double
    True
    >>> PLUGINS.load_package("mypkg.plugins")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Registry(Generic[K, V]):
    """A named mapping from keys to entries, filled by `@registry.register(key)`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._entries: dict[K, V] = {}
        self._packages: set[str] = set()

    def register(self, key: K) -> Callable[[V], V]:
        def decorator(entry: V) -> V:
            self.add(key, entry)
            return entry

        return decorator

    def add(self, key: K, entry: V) -> None:
        if key in self._entries:
            raise KeyError(f"{self.name}: key {key!r} is already registered")
        self._entries[key] = entry

    def load_package(self, package: str) -> Registry[K, V]:
        """Import every module of `package` (its direct modules and sub-packages, sorted by name) so that
        their decorators register their entries; return the registry.

        Deterministic: in a fresh process the entries are registered in module-name order (as long as no
        plug-in module imports another, which the packages using this keep as a rule); code that lists
        entries to users sorts them anyway. Idempotent: a package already loaded is not walked again. Modules whose names start with "_" are skipped: they hold shared helpers, not entries.
        An import error in a module propagates: a broken plug-in is a bug, not a missing feature.
        """
        if package in self._packages:
            return self
        pkg = importlib.import_module(package)
        names = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))
        for name in names:
            importlib.import_module(f"{package}.{name}")
        self._packages.add(package)
        return self

    def get(self, key: K) -> V:
        try:
            return self._entries[key]
        except KeyError:
            known = ", ".join(sorted(map(str, self._entries)))
            raise KeyError(f"{self.name}: unknown key {key!r} (known: {known})") from None

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[K]:
        return iter(self._entries)

    def items(self) -> list[tuple[K, V]]:
        return list(self._entries.items())

    def keys(self) -> list[K]:
        return list(self._entries)

    def values(self) -> list[V]:
        return list(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)


def splice_block(text: str, begin: str, end: str, block: str, where: str) -> str:
    """`text` with everything from the `begin` marker to the `end` marker replaced by `block` (which
    carries both markers): how README/docs tables generated from a registry are kept current."""
    if begin not in text or end not in text:
        raise ValueError(f"{where} has no generated-block markers {begin!r} ... {end!r}")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return head + block + tail
