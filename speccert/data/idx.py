"""IDX files (the MNIST / Fashion-MNIST format), gzipped or not.

Layout: big-endian header 0x00 0x00 <dtype code> <ndim>, ndim big-endian uint32 sizes, the raw array.
A folder holding `t10k-images-idx3-ubyte(.gz)` / `t10k-labels-idx1-ubyte(.gz)` (test) and
`train-...` (train) is read by split.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from speccert.errors import InputError, UsageError
from speccert.limits import check_bytes

_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
SPLIT_PREFIX = {"test": "t10k", "train": "train"}


def _read_capped(path: Path) -> tuple[np.dtype, tuple[int, ...], bytes]:
    """(dtype, dims, data) reading exactly the bytes the header declares, streaming through gzip:
    the declared size is checked against the memory budget first, and a file (or gzip stream) holding
    more or less than declared is refused without inflating the rest (a gzip bomb stops there)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        head = f.read(4)
        if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _DTYPES:
            raise InputError(f"{path}: not an IDX file (bad magic number)")
        ndim = head[3]
        raw_dims = f.read(4 * ndim)
        if len(raw_dims) < 4 * ndim:
            raise InputError(f"{path}: truncated IDX header")
        dims = tuple(int(d) for d in np.frombuffer(raw_dims, dtype=">u4", count=ndim))
        dtype = _DTYPES[head[2]]
        need = math.prod(dims) * dtype.itemsize
        check_bytes(f"{path}: an IDX array of shape {list(dims)}", max(need, 4 * math.prod(dims)))
        data = f.read(need)
        extra = len(f.read(1))
    if len(data) != need or extra:
        held = f"{len(data)}" if not extra else f"more than {need}"
        raise InputError(f"{path}: IDX header declares {list(dims)} ({need} bytes) but holds {held} bytes")
    return dtype, dims, data


def read_idx(path: Path) -> np.ndarray:
    """One IDX file as a numpy array of its declared dtype and shape (InputError if malformed)."""
    try:
        dtype, dims, data = _read_capped(path)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise InputError(f"cannot read IDX file {path}: {str(exc).splitlines()[0]}") from None
    return np.frombuffer(data, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def holds_idx(path: Path) -> bool:
    """Whether `path` is a folder holding IDX files: the only data a split (test / train) chooses in."""
    return path.is_dir() and any(p.name.endswith(("-ubyte", "-ubyte.gz")) for p in path.iterdir())


def check_split_applies(data: str | os.PathLike[str], split: str | None, what: str) -> None:
    """A split the user gave (`what` names it: an option or a policy key) must have files to choose
    between: on anything but a folder of IDX files it would be ignored silently, so it is an error."""
    path = Path(data)
    if split is not None and path.exists() and not holds_idx(path):
        raise UsageError(
            f"{what} = {split!r} chooses between the test and train files of a folder of IDX files; {data} is "
            "not one, so it would be ignored (leave it out)"
        )


def idx_pair_in_folder(folder: Path, split: str) -> tuple[Path, Path] | None:
    """(images, labels) files of `split` in `folder`, or None when the folder holds no IDX files."""
    prefix = SPLIT_PREFIX[split]
    images = _find(folder, f"{prefix}-images-idx3-ubyte")
    labels = _find(folder, f"{prefix}-labels-idx1-ubyte")
    if images is None and labels is None:
        if any(p.name.endswith(("-ubyte", "-ubyte.gz")) for p in folder.iterdir()):
            raise InputError(
                f"{folder}: no {prefix}-images-idx3-ubyte(.gz) / {prefix}-labels-idx1-ubyte(.gz) "
                f"for --split {split}"
            )
        return None
    if images is None or labels is None:
        missing = f"{prefix}-images-idx3-ubyte" if images is None else f"{prefix}-labels-idx1-ubyte"
        raise InputError(f"{folder}: {missing}(.gz) is missing")
    return images, labels


def labels_beside(images: Path) -> Path:
    """The labels file that goes with an images file: images -> labels, idx3 -> idx1."""
    name = images.name.replace("images", "labels").replace("idx3", "idx1")
    cand = images.with_name(name)
    if cand == images or not cand.is_file():
        raise InputError(f"{images}: cannot find its labels file (expected {cand.name} beside it)")
    return cand
