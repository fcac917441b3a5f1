"""IDX files (the MNIST / Fashion-MNIST format), gzipped or not.

Layout: big-endian header 0x00 0x00 <dtype code> <ndim>, ndim big-endian uint32 sizes, the raw array.
A folder holding `t10k-images-idx3-ubyte(.gz)` / `t10k-labels-idx1-ubyte(.gz)` (test) and
`train-...` (train) is read by split.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np

from speccert.errors import InputError

_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
SPLIT_PREFIX = {"test": "t10k", "train": "train"}


def read_idx(path: Path) -> np.ndarray:
    """One IDX file as a numpy array of its declared dtype and shape (InputError if malformed)."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"cannot read IDX file {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise InputError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise InputError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _DTYPES[raw[2]]
    need = math.prod(dims) * dtype.itemsize
    if len(raw) - header != need:
        raise InputError(
            f"{path}: IDX header declares {list(dims)} ({need} bytes) but holds {len(raw) - header} bytes"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


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
