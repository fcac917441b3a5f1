"""Typed registries filled by decorators; registering a key twice is an error (STYLE.md rule 1)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Registry(Generic[K, V]):
    """A named mapping from keys to entries, filled by `@registry.register(key)`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._entries: dict[K, V] = {}

    def register(self, key: K) -> Callable[[V], V]:
        def decorator(entry: V) -> V:
            self.add(key, entry)
            return entry

        return decorator

    def add(self, key: K, entry: V) -> None:
        if key in self._entries:
            raise KeyError(f"{self.name}: key {key!r} is already registered")
        self._entries[key] = entry

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

    def __len__(self) -> int:
        return len(self._entries)
