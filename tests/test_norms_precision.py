"""GPU soundness guard: TF32 and reduced-precision reductions never reach a certificate.

The error bounds of speccert.norms assume IEEE arithmetic in the tensors' dtype; TF32 tensor cores
(cuDNN convolutions allow them by default) round float32 inputs to 10 mantissa bits. `exact_float_math`
switches every such knob off while norms are computed and restores the user's settings.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from speccert.ir.ops import Conv
from speccert.norms import auto
from speccert.norms.auto import norm_of_layer
from speccert.norms.layer import LinearLayer
from speccert.norms.method import NormContext
from speccert.norms.precision import _knobs, exact_float_math, precision_flags

PERMISSIVE = {"fp32_precision": "tf32", "allow_tf32": True}


def _safe(flags: dict[str, object]) -> bool:
    return all(v in ("ieee", False, "highest") for v in flags.values())


@pytest.fixture
def permissive() -> Iterator[dict[str, object]]:
    """Every knob set to its reduced-precision value (what a user's training script may leave on)."""
    before = [(obj, attr, getattr(obj, attr)) for _, obj, attr, _ in _knobs()]
    for _, obj, attr, _ in _knobs():
        setattr(obj, attr, PERMISSIVE.get(attr, attr != "allow_fp16_accumulation"))
    try:
        yield precision_flags()
    finally:
        for obj, attr, value in reversed(before):
            setattr(obj, attr, value)


def _conv_layer(device: str = "cpu") -> LinearLayer:
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(8, 6, 3, 3, generator=gen, dtype=torch.float64).to(device)
    op = Conv(w, None, (1, 1), ((1, 1), (1, 1)), (1, 1), 1, "zeros")
    return LinearLayer("c", op, (6, 7, 7), (8, 7, 7))


def test_guard_sets_and_restores_every_flag(permissive: dict[str, object]) -> None:
    assert not _safe(permissive)  # the fixture really turned them on
    with exact_float_math():
        inside = precision_flags()
        with exact_float_math():  # nesting keeps them off and restores the outer state
            pass
        assert precision_flags() == inside
    assert _safe(inside), inside
    assert precision_flags() == permissive


def test_guard_restores_on_error(permissive: dict[str, object]) -> None:
    with pytest.raises(RuntimeError), exact_float_math():
        raise RuntimeError("boom")
    assert precision_flags() == permissive


def test_norms_run_under_the_guard(permissive: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, object]] = []
    real = auto._auto

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append(precision_flags())
        return real(*args, **kwargs)

    monkeypatch.setattr(auto, "_auto", spy)
    ln = norm_of_layer(_conv_layer(), "auto", NormContext())
    assert seen and _safe(seen[0]), seen
    assert precision_flags() == permissive
    assert ln.lower is not None and ln.lower.value <= ln.upper.value


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_certificates_unchanged_with_tf32_forced_on(permissive: dict[str, object]) -> None:
    ctx_cpu, ctx_gpu = NormContext(), NormContext(device=torch.device("cuda"))
    for method in ("auto", "fft", "fantastic4", "exact", "lanczos", "power"):
        ref = norm_of_layer(_conv_layer(), method, ctx_cpu)
        got = norm_of_layer(_conv_layer("cuda"), method, ctx_gpu)
        # Certified values are float64 computations with proven error bounds: CPU and GPU may differ in
        # summation order only, far below 1e-9; TF32 would move them by ~1e-3.
        assert got.upper.value == pytest.approx(ref.upper.value, rel=1e-9), method
        if ref.lower is not None and got.lower is not None and method != "power":
            assert got.lower.value <= got.upper.value
    assert precision_flags() == permissive
