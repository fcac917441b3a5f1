"""Read the Fashion-MNIST IDX files for the training scripts in this folder.

The IDX format (LeCun et al., the MNIST format): a big-endian header ``0x00 0x00 <dtype> <ndim>``,
then ``ndim`` big-endian uint32 sizes, then the raw array. Fashion-MNIST ships four such files
(``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-...``), optionally gzipped.

Where the files are looked for, first match wins:
1. the ``root`` argument (``--data`` of the scripts),
2. the ``SPECCERT_DATA`` environment variable,
3. ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist`` package).

Only numpy is needed here; images come back as float32 in [0, 1] with shape ``[n, 1, 28, 28]``
(pixel space: the certified function takes exactly these tensors), labels as int64.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_PREFIX = {"train": "train", "test": "t10k"}


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder holding the IDX files: ``root``, else ``$SPECCERT_DATA``, else Debian's path."""
    for candidate in (root, os.environ.get("SPECCERT_DATA"), DEBIAN_ROOT):
        if candidate:
            return Path(candidate)
    return DEBIAN_ROOT


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (gzipped or not) into a numpy array of its declared dtype and shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic {raw[:4]!r})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    body = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but body has {body.size} items")
    return body.reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"{stem}[.gz] not found under {root}: install Debian's dataset-fashion-mnist, "
        "or pass --data / set SPECCERT_DATA to the folder holding the Fashion-MNIST IDX files"
    )


def load_split(split: str, root: str | os.PathLike[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load ``split`` ('train' or 't10k'/'test') as (x float32 [n,1,28,28] in [0,1], y int64 [n])."""
    prefix = _PREFIX.get(split, split)
    base = data_root(root)
    images = read_idx(_find(base, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(base, f"{prefix}-labels-idx1-ubyte"))
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{split}: {images.shape[0]} images but {labels.shape[0]} labels")
    x = (images.astype(np.float32) / np.float32(255.0))[:, None, :, :]
    return x, labels.astype(np.int64)
