"""Local slope ranges and images of elementwise activations on intervals (for the local certificate).

For an activation f (speccert.ir.activations) and per-unit intervals [lo, hi] of its input,
`slope_range(fn, alpha, lo, hi)` returns (dlo, dhi) with dlo <= f'(z) <= dhi for every z in [lo, hi]
(Clarke's set at kinks), and `image(fn, alpha, lo, hi)` returns an enclosure of f([lo, hi]).

How the ranges are proven: f' is monotone between its critical points, so its extremes over
[lo, hi] are at lo, hi or at a critical point inside. The critical points of f' are known in closed
form or enclosed (`CRITICAL`: silu +-2.39936, gelu +-sqrt(2), gelu_tanh +-1.41850, each within
+-3e-4; tests/test_local_slopes.py checks the sign of f'' on both sides of every enclosure). Where an enclosure meets
[lo, hi], the value there is replaced by the global extreme (the stored, rounded-outward sup |f'|,
and the minimum 1 - sup f', since f'(-x) = 1 - f'(x) for silu, gelu and gelu_tanh). Values computed
by float64 library functions (sigmoid, tanh, erf, exp: a few ulps) are widened by PAD (1e-12
relative plus absolute), far above their error. ReLU ranges and images are exact (0/1 slopes, clamps).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from speccert.bounds.certificate import NotApplicable
from speccert.ir.activations import activation_lipschitz

Tensor = torch.Tensor
PAD = 1e-12
Deriv = Callable[[Tensor], Tensor]


def _silu_d(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1.0 + z * (1.0 - s))


def _gelu_d(z: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0))) + z * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _gelu_tanh_d(z: Tensor) -> Tensor:
    c, k = math.sqrt(2.0 / math.pi), 0.044715
    t = torch.tanh(c * (z + k * z**3))
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * c * (1.0 + 3 * k * z * z)


def _sigmoid_d(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1.0 - s)


def _tanh_d(z: Tensor) -> Tensor:
    t = torch.tanh(z)
    return 1.0 - t * t


# f' increasing on (-c, c), decreasing outside: (derivative, enclosure [c_lo, c_hi] of c)
CRITICAL: dict[str, tuple[Deriv, float, float]] = {
    "silu": (_silu_d, 2.399, 2.3997),  # c = 2.3993573...
    "gelu": (_gelu_d, 1.4141, 1.4143),  # c = sqrt(2)
    "gelu_tanh": (_gelu_tanh_d, 1.4184, 1.4186),  # c = 1.4185040...
}
# f' even and decreasing in |z|
EVEN: dict[str, Deriv] = {"sigmoid": _sigmoid_d, "tanh": _tanh_d}
MONOTONE = {"relu", "leaky_relu", "identity", "elu", "sigmoid", "tanh", "softplus"}
SUPPORTED = MONOTONE | set(CRITICAL)


def _widen(dlo: Tensor, dhi: Tensor) -> tuple[Tensor, Tensor]:
    return dlo - PAD * (1.0 + dlo.abs()), dhi + PAD * (1.0 + dhi.abs())


def _two_piece(lo: Tensor, hi: Tensor, neg_lo: Tensor, neg_hi: Tensor, pos: float) -> tuple[Tensor, Tensor]:
    """f' = a function with range [neg_lo, neg_hi] on the z < 0 part of [lo, hi], `pos` for z > 0."""
    has_neg, has_pos = lo <= 0, hi >= 0
    inf = torch.full_like(lo, math.inf)
    dlo = torch.minimum(torch.where(has_neg, neg_lo, inf), torch.where(has_pos, pos, inf))
    dhi = torch.maximum(torch.where(has_neg, neg_hi, -inf), torch.where(has_pos, pos, -inf))
    return dlo, dhi


def slope_range(fn: str, alpha: float, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """(dlo, dhi): dlo <= f'(z) <= dhi for all z in [lo, hi] (elementwise; module docstring)."""
    if fn == "relu":
        return (lo > 0).to(lo.dtype), (hi > 0).to(lo.dtype)
    if fn == "identity":
        return torch.ones_like(lo), torch.ones_like(lo)
    if fn == "leaky_relu":
        a = torch.full_like(lo, alpha)
        return _two_piece(lo, hi, a, a, 1.0)
    if fn == "elu":  # alpha e^z on z < 0 (monotone in z), 1 on z > 0
        if alpha < 0:
            raise NotApplicable("the local certificate needs elu with alpha >= 0")
        nlo, nhi = alpha * torch.exp(lo.clamp_max(0.0)), alpha * torch.exp(hi.clamp_max(0.0))
        return _widen(*_two_piece(lo, hi, nlo, nhi, 1.0))
    if fn == "softplus":  # f' = sigmoid, increasing
        return _widen(torch.sigmoid(lo), torch.sigmoid(hi))
    if fn in EVEN:  # max at the point nearest 0, min at the farthest
        d = EVEN[fn]
        near = torch.where((lo <= 0) & (hi >= 0), torch.zeros_like(lo), torch.minimum(lo.abs(), hi.abs()))
        return _widen(d(torch.maximum(lo.abs(), hi.abs())), d(near))
    if fn in CRITICAL:
        d, c_lo, c_hi = CRITICAL[fn]
        top = activation_lipschitz(fn, alpha)
        bottom = 1.0 - top  # f'(-z) = 1 - f'(z)
        a, b = d(lo), d(hi)
        dlo, dhi = torch.minimum(a, b), torch.maximum(a, b)
        meets_max = (lo <= c_hi) & (hi >= c_lo)
        meets_min = (lo <= -c_lo) & (hi >= -c_hi)
        dhi = torch.where(meets_max, torch.full_like(dhi, top), dhi)
        dlo = torch.where(meets_min, torch.full_like(dlo, bottom), dlo)
        return _widen(dlo, dhi)
    raise NotApplicable(f"the local certificate has no local slope bounds for {fn}")


def _forward(fn: str, alpha: float, z: Tensor) -> Tensor:
    if fn == "relu":
        return F.relu(z)
    if fn == "leaky_relu":
        return F.leaky_relu(z, alpha)
    if fn == "identity":
        return z
    if fn == "elu":
        return F.elu(z, alpha)
    if fn == "sigmoid":
        return torch.sigmoid(z)
    if fn == "tanh":
        return torch.tanh(z)
    if fn == "softplus":
        return F.softplus(z)
    if fn == "silu":
        return F.silu(z)
    if fn == "gelu":
        return F.gelu(z)
    assert fn == "gelu_tanh"
    return F.gelu(z, approximate="tanh")


def image(fn: str, alpha: float, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """An enclosure [ylo, yhi] of f([lo, hi]): the end values where f is non-decreasing, else the
    mean-value form f(c) +- max|f'| (hi - lo) / 2 around the midpoint c (every rounding widened)."""
    if fn == "relu":
        return lo.clamp_min(0.0), hi.clamp_min(0.0)
    if fn not in SUPPORTED:
        raise NotApplicable(f"no enclosure over a ball for {fn}")
    if fn in MONOTONE and alpha >= 0:
        ylo, yhi = _forward(fn, alpha, lo), _forward(fn, alpha, hi)
        return _widen(ylo, yhi)
    dlo, dhi = slope_range(fn, alpha, lo, hi)
    c = (lo + hi) / 2
    half = torch.maximum(hi - c, c - lo) * (1.0 + 1e-15)
    spread = torch.maximum(dlo.abs(), dhi.abs()) * half * (1.0 + 1e-15)
    yc = _forward(fn, alpha, c)
    return _widen(yc - spread, yc + spread)
