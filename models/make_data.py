"""Write the bundled Fashion-MNIST subsets under ``models/data/`` (so the README's main job needs no download).

Usage::

    python models/make_data.py [--data /usr/share/datasets/fashion-mnist] [--seed 0]

Writes, each an ``.npz`` with ``x`` float32 [n, 1, 28, 28] in [0, 1] (pixel / 255), ``y`` int64 [n] and
``index`` int64 [n] (the image's position in its original IDX file, for provenance):

- ``fashion_mnist_test_1k.npz``: 1,000 test images, 100 per class, drawn without replacement with
  ``numpy.random.default_rng(seed)`` from the 10,000-image test set, then sorted by original index.
- ``fashion_mnist_train_2k.npz``: 2,000 training images, 200 per class, drawn the same way (seed + 1)
  from the 60,000-image training set; for small fine-tuning examples (the models were trained on the
  full training set, so this is not held-out data).

The selection is deterministic: the same seed and the same IDX files give byte-identical arrays.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from fashion_data import load_split

HERE = Path(__file__).resolve().parent
OUT = HERE / "data"


def stratified_indices(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Pick ``per_class`` indices of every label (without replacement), sorted ascending."""
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(y == c), size=per_class, replace=False) for c in np.unique(y)]
    return np.sort(np.concatenate(picks)).astype(np.int64)


def write_subset(split: str, per_class: int, seed: int, name: str, root: str | None) -> Path:
    x, y = load_split(split, root)
    idx = stratified_indices(y, per_class, seed)
    OUT.mkdir(exist_ok=True)
    path = OUT / name
    np.savez_compressed(path, x=x[idx], y=y[idx], index=idx)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None, help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    for path in (
        write_subset("test", 100, a.seed, "fashion_mnist_test_1k.npz", a.data),
        write_subset("train", 200, a.seed + 1, "fashion_mnist_train_2k.npz", a.data),
    ):
        print(f"wrote {path.relative_to(HERE.parent)} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
