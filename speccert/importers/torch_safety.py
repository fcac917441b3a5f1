"""Reading `torch.export` archives without running code from them.

`torch.export.load` is not safe by itself (torch 2.13): the archive reader unpickles weights and
constants flagged `use_pickle` with `torch.load(weights_only=False)`, unpickles opaque constants with
`pickle.loads`, and reads the example inputs with a silent fallback to `weights_only=False`. A crafted
`.pt2` therefore runs arbitrary code on load. `no_code_unpickling()` closes those paths for the
duration of the load: every `torch.load` is forced to `weights_only=True` (tensors and plain
containers only) and the reader's `pickle.loads` refuses, so such an archive fails to load instead.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator
from typing import Any

import torch


class _RefusingPickle:
    """Stands in for the `pickle` module inside torch's archive reader."""

    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def loads(*args: Any, **kwargs: Any) -> Any:
        raise pickle.UnpicklingError("refusing to unpickle a Python object from the archive")

    def __getattr__(self, name: str) -> Any:
        return getattr(pickle, name)


@contextlib.contextmanager
def no_code_unpickling() -> Iterator[None]:
    """Within this block, `torch.load` only loads tensors (weights_only=True) and torch's .pt2 reader
    cannot unpickle arbitrary objects. Not thread-safe: it patches module attributes and restores them."""
    from torch.export.pt2_archive import _package

    real_load = torch.load

    def weights_only_load(f: Any, map_location: Any = None, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("pickle_module", None)
        kwargs["weights_only"] = True
        return real_load(f, map_location, **kwargs)

    real_pickle = getattr(_package, "pickle", None)
    torch.load = weights_only_load  # type: ignore[assignment]
    _package.pickle = _RefusingPickle()  # type: ignore[attr-defined,assignment]
    try:
        yield
    finally:
        torch.load = real_load
        if real_pickle is not None:
            _package.pickle = real_pickle  # type: ignore[attr-defined]
