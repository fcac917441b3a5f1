"""Full-precision floating point while a certificate is computed (`exact_float_math`).

Every rounding-error bound in speccert.norms (gamma(n) = n u / (1 - n u), Higham) assumes IEEE
arithmetic in the dtype of the tensors: a float32 product rounded to float32, a float64 one to float64,
in any summation order. GPU libraries may silently do less: TF32 tensor cores round float32 matmul and
convolution inputs to 10 mantissa bits (cuBLAS, cuDNN; cuDNN convolutions allow it by default), and
half/bfloat16 GEMMs may reduce in reduced precision. oneDNN on CPUs can likewise be told to run float32
in bf16/tf32. None of that may reach a certificate, so `exact_float_math` switches every such knob off
for its duration and restores the user's settings afterwards (nesting is fine). Non-deterministic
kernels (atomics, split-K) are harmless: the error bounds hold for any summation order.

    >>> with exact_float_math():           # doctest: +SKIP
    ...     norms = layer_norms(graph, device="cuda")
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

# (object path under torch.backends, attribute, full-precision value), new API (torch >= 2.9) first.
_NEW_API = (
    ("cuda.matmul", "fp32_precision", "ieee"),
    ("cudnn.conv", "fp32_precision", "ieee"),
    ("cudnn.rnn", "fp32_precision", "ieee"),
    ("mkldnn.matmul", "fp32_precision", "ieee"),
    ("mkldnn.conv", "fp32_precision", "ieee"),
    ("mkldnn.rnn", "fp32_precision", "ieee"),
)
_LEGACY_TF32 = (
    ("cuda.matmul", "allow_tf32", False),
    ("cudnn", "allow_tf32", False),
)
_REDUCED = (
    ("cuda.matmul", "allow_fp16_reduced_precision_reduction", False),
    ("cuda.matmul", "allow_bf16_reduced_precision_reduction", False),
    ("cuda.matmul", "allow_fp16_accumulation", False),
)


def _owner(path: str) -> Any:
    obj: Any = torch.backends
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _knobs() -> list[tuple[str, Any, str, object]]:
    """The (path, object, attribute, safe value) of every knob this torch build has."""
    new_api = _owner("cuda.matmul") is not None and hasattr(_owner("cuda.matmul"), "fp32_precision")
    # Reading a legacy allow_tf32 flag after the new API set different values raises: use one API.
    table = (_NEW_API if new_api else _LEGACY_TF32) + _REDUCED
    found: list[tuple[str, Any, str, object]] = []
    for path, attr, safe in table:
        obj = _owner(path)
        if obj is not None and hasattr(obj, attr):
            found.append((path, obj, attr, safe))
    return found


def precision_flags() -> dict[str, object]:
    """The current value of every knob `exact_float_math` sets, keyed "path.attribute" (for tests/reports)."""
    knobs = _knobs()
    out: dict[str, object] = {}
    if not any(attr == "fp32_precision" for _, _, attr, _ in knobs):
        # (with the new API this global getter raises once backends differ: it is not used then)
        out["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    for path, obj, attr, _ in knobs:
        out[f"{path}.{attr}"] = getattr(obj, attr)
    return out


@contextmanager
def exact_float_math() -> Iterator[None]:
    """Within the block, no TF32 and no reduced-precision reductions (module docstring); restored after."""
    knobs = _knobs()
    saved = [(obj, attr, getattr(obj, attr)) for _, obj, attr, _ in knobs]
    new_api = any(attr == "fp32_precision" for _, _, attr, _ in knobs)
    matmul_precision = "highest" if new_api else torch.get_float32_matmul_precision()
    try:
        for _, obj, attr, safe in knobs:
            setattr(obj, attr, safe)
        if not new_api:
            torch.set_float32_matmul_precision("highest")
        yield
    finally:
        for obj, attr, value in reversed(saved):
            setattr(obj, attr, value)
        if not new_api:
            torch.set_float32_matmul_precision(matmul_precision)
