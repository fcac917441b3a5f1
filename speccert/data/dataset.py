"""The labelled data certify() runs on, and the checks that make it fit a model."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from speccert.errors import InputError


@dataclass(frozen=True)
class Dataset:
    """x: [N, ...] float32 or float64 in the user's data space (uint8 images scaled to [0, 1]); y: [N] int64."""

    x: np.ndarray
    y: np.ndarray
    source: str
    split: str | None = None
    classes: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def head(self, limit: int | None) -> Dataset:
        if limit is None or limit >= len(self):
            return self
        return Dataset(self.x[:limit], self.y[:limit], self.source, self.split, self.classes)


def as_float_images(x: np.ndarray, what: str) -> np.ndarray:
    """uint8 -> float32 / 255; float64 stays float64 (the exact points certified); other numeric
    arrays -> float32; anything else -> InputError."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    if x.dtype == np.bool_ or not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise InputError(f"{what}: inputs must be a real numeric array, got dtype {x.dtype}")
    return x if x.dtype == np.float64 else x.astype(np.float32, copy=False)


def as_labels(y: np.ndarray, what: str) -> np.ndarray:
    """Integer class labels [N] (a float array is accepted when every value is an integer)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise InputError(f"{what}: labels must be a 1-D array of class indices, got shape {list(y.shape)}")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise InputError(f"{what}: labels must be integer class indices")
    elif not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"{what}: labels must be integer class indices, got dtype {y.dtype}")
    return y.astype(np.int64)


def make_dataset(
    x: np.ndarray,
    y: np.ndarray,
    source: str,
    split: str | None = None,
    classes: tuple[str, ...] | None = None,
) -> Dataset:
    x = as_float_images(np.asarray(x), source)
    y = as_labels(y, source)
    if x.ndim < 2:
        raise InputError(
            f"{source}: inputs must have a sample axis and at least one feature axis, "
            f"got shape {list(x.shape)}"
        )
    if x.shape[0] != y.shape[0]:
        raise InputError(f"{source}: {x.shape[0]} inputs but {y.shape[0]} labels")
    if x.shape[0] == 0:
        raise InputError(f"{source}: the data set is empty")
    if not np.all(np.isfinite(x)):
        raise InputError(f"{source}: inputs contain NaN or Inf")
    return Dataset(x, y, source, split, classes)


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def fit_to_model(data: Dataset, input_shape: tuple[int, ...], n_classes: int) -> Dataset:
    """Reshape x to the model's input shape when that only adds/removes size-1 axes or (un)flattens
    (784 <-> 1x28x28); check labels are in [0, n_classes). Layout changes (HWC vs CHW) are refused."""
    shape = tuple(data.x.shape[1:])
    x = data.x
    if shape != tuple(input_shape):
        same_count = math.prod(shape) == math.prod(input_shape)
        a, b = _squeezed(shape), _squeezed(tuple(input_shape))
        if same_count and (a == b or len(a) <= 1 or len(b) <= 1):
            x = x.reshape((x.shape[0], *input_shape))
        else:
            hint = ""
            if same_count and sorted(shape) == sorted(input_shape):
                hint = " (same sizes in another order: transpose the data, e.g. HWC -> CHW, first)"
            raise InputError(
                f"{data.source}: samples have shape {list(shape)} but the model takes "
                f"{list(input_shape)}{hint}"
            )
    bad = (data.y < 0) | (data.y >= n_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{data.source}: label {int(data.y[i])} of sample {i} is out of range: the model has "
            f"{n_classes} classes (0..{n_classes - 1}); {int(bad.sum())} labels out of range"
        )
    return Dataset(np.ascontiguousarray(x), data.y, data.source, data.split, data.classes)
