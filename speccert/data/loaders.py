"""`load_data(path, split)`: pick a reader by what the path is.

- `.npz` with arrays `x` and `y`;
- `.npy` inputs with their labels beside them (`x.npy` -> `y.npy`, `*_x.npy` -> `*_y.npy`,
  `images.npy` -> `labels.npy`), or a folder holding `x.npy` and `y.npy`;
- IDX files: an `*-images-idx3-ubyte(.gz)` file (labels beside it) or a folder of them (`split`);
- a folder with one sub-folder of images per class.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from speccert.data.dataset import Dataset, make_dataset
from speccert.data.idx import idx_pair_in_folder, labels_beside, read_idx
from speccert.data.image_folder import read_image_folder
from speccert.errors import InputError, UsageError
from speccert.limits import check_bytes

SPLITS = ("test", "train")
_LABEL_NAMES = {"x.npy": "y.npy", "images.npy": "labels.npy", "inputs.npy": "labels.npy", "X.npy": "Y.npy"}


def _npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None


def _load_npz(path: Path) -> Dataset:
    try:
        with zipfile.ZipFile(path) as zf:  # members are inflated whole: check what they declare first
            check_bytes(f"{path}: the arrays", sum(i.file_size for i in zf.infolist()))
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            if "x" not in keys or "y" not in keys:
                raise InputError(
                    f"{path}: an .npz data file needs arrays 'x' and 'y' (found: {', '.join(keys) or 'none'})"
                )
            x, y = z["x"], z["y"]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    return make_dataset(x, y, str(path))


def _labels_for(path: Path) -> Path:
    name = path.name
    if name in _LABEL_NAMES:
        cand = path.with_name(_LABEL_NAMES[name])
    elif name.endswith("_x.npy"):
        cand = path.with_name(name[: -len("_x.npy")] + "_y.npy")
    else:
        raise InputError(
            f"{path}: cannot tell where its labels are; name the inputs x.npy (labels y.npy), "
            "<name>_x.npy (labels <name>_y.npy), or use an .npz with x and y"
        )
    if not cand.is_file():
        raise InputError(f"{path}: labels file {cand.name} not found beside it")
    return cand


def load_data(path: str | os.PathLike[str], split: str = "test", limit: int | None = None) -> Dataset:
    """Read labelled data; uint8 images are scaled to [0, 1]. `limit` keeps the first N samples."""
    if split not in SPLITS:
        raise UsageError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if limit is not None and limit <= 0:
        raise UsageError(f"--limit must be a positive number of samples, got {limit}")
    if not os.fspath(path):  # Path("") is ".": the current folder was read as an image folder
        raise UsageError("--data: empty path (is the variable you passed set?)")
    p = Path(path)
    if not p.exists():
        raise InputError(f"data not found: {p}")
    if p.is_dir():
        pair = idx_pair_in_folder(p, split)
        if pair is not None:
            x, y = read_idx(pair[0]), read_idx(pair[1])
            return make_dataset(x, y, str(pair[0]), split).head(limit)
        if (p / "x.npy").is_file() and (p / "y.npy").is_file():
            return make_dataset(_npy(p / "x.npy"), _npy(p / "y.npy"), str(p / "x.npy")).head(limit)
        x, y, classes = read_image_folder(p)
        return make_dataset(x, y, str(p), classes=classes).head(limit)
    name = p.name.lower()
    if name.endswith(".npz"):
        return _load_npz(p).head(limit)
    if name.endswith(".npy"):
        return make_dataset(_npy(p), _npy(_labels_for(p)), str(p)).head(limit)
    if name.endswith(("-ubyte", "-ubyte.gz")):
        return make_dataset(read_idx(p), read_idx(labels_beside(p)), str(p)).head(limit)
    raise InputError(
        f"{p}: unknown data format; expected .npz (x, y), .npy pairs, IDX files, or a folder "
        "(IDX files, x.npy/y.npy, or one sub-folder of images per class)"
    )
