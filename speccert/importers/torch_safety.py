"""Reading `torch.export` archives without running code from them.

`torch.export.load` is not safe by itself (torch 2.13): the archive reader unpickles weights and
constants flagged `use_pickle` with `torch.load(weights_only=False)`, unpickles opaque constants with
`pickle.loads`, and reads the example inputs with a silent fallback to `weights_only=False`. A crafted
`.pt2` therefore runs arbitrary code on load. `no_code_unpickling()` closes those paths for the
duration of the load: every `torch.load` is forced to `weights_only=True` (tensors and plain
containers only) and the reader's `pickle.loads` refuses, so such an archive fails to load instead.

`check_archive_sizes()` runs before any member is inflated: a zip's central directory declares every
member's uncompressed size, so a small archive that inflates to gigabytes (a zip bomb), or a weight
member far larger than the tensor its config declares, is refused with InputError.
"""

from __future__ import annotations

import contextlib
import json
import math
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from speccert.errors import InputError
from speccert.limits import check_bytes, human

# bytes per element of the widest dtype a weight can have (complex128): the member's size limit
_MAX_ITEMSIZE = 16
_CONFIG_SUFFIX = "/data/weights/model_weights_config.json"


def _declared_elements(meta: dict[str, Any]) -> int | None:
    """Storage elements a tensor's sizes/strides/offset need, or None when not plain integers."""
    try:
        sizes = [int(d["as_int"]) for d in meta["sizes"]]
        strides = [int(d["as_int"]) for d in meta["strides"]]
        offset = int(meta.get("storage_offset", {}).get("as_int", 0))
    except (KeyError, TypeError, ValueError):
        return None
    if math.prod(sizes) == 0:
        return 0
    return offset + 1 + sum((n - 1) * abs(s) for n, s in zip(sizes, strides, strict=False))


def check_archive_sizes(path: Path) -> None:
    """Refuse a .pt2 whose members declare more than the memory budget in all, or a weight member
    larger than its tensor (sizes x strides in model_weights_config.json) can use."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = {i.filename: i for i in z.infolist()}
            check_bytes(f"{path}: the archive's members", sum(i.file_size for i in infos.values()))
            for name, info in infos.items():
                if not name.endswith(_CONFIG_SUFFIX):
                    continue
                folder = name[: -len("model_weights_config.json")]
                config = json.loads(z.read(info)).get("config", {})
                for key, entry in config.items():
                    if entry.get("use_pickle"):  # a pickle, not raw storage (refused by default anyway)
                        continue
                    member = infos.get(folder + str(entry.get("path_name", "")))
                    n = _declared_elements(entry.get("tensor_meta") or {})
                    if member is not None and n is not None and member.file_size > n * _MAX_ITEMSIZE:
                        raise InputError(
                            f"{path}: weight '{key}' is stored in {human(member.file_size)}, but its "
                            f"declared shape needs at most {human(n * _MAX_ITEMSIZE)} (corrupt or hostile archive)"
                        )
    except (zipfile.BadZipFile, OSError, ValueError, AttributeError) as exc:
        raise InputError(f"{path} is a corrupt archive: {str(exc).splitlines()[0]}") from None


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
