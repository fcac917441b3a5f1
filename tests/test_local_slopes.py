"""Local slope ranges and images of activations: every sampled derivative / value lies inside."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from speccert.bounds.local_slopes import CRITICAL, SUPPORTED, image, slope_range
from speccert.ir.activations import ACTIVATIONS

D = torch.float64
ALPHA = {"leaky_relu": 0.1, "elu": 1.0}


def _grid(lo: torch.Tensor, hi: torch.Tensor, n: int = 2001) -> torch.Tensor:
    t = torch.linspace(0.0, 1.0, n, dtype=D)
    # lo + (hi - lo) * 1 can round past hi (centre -0.99999, width 2 did): keep the samples in [lo, hi]
    return torch.minimum(lo[:, None] + (hi - lo)[:, None] * t[None, :], hi[:, None])


def _derivative(fn: str, z: torch.Tensor) -> torch.Tensor:
    zz = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(ACTIVATIONS.get(fn).fn(zz, ALPHA.get(fn, 0.0)).sum(), zz)
    return g


@pytest.mark.parametrize("fn", sorted(SUPPORTED))
@settings(max_examples=20, deadline=None)
@given(centre=st.floats(-8, 8), width=st.floats(0, 6))
@example(centre=-0.99999, width=2.0)  # the sample grid once rounded past hi here
def test_every_sampled_slope_and_value_is_inside(fn: str, centre: float, width: float) -> None:
    lo = torch.tensor([centre - width / 2, centre, -width, 2.4 - width / 4], dtype=D)
    hi = torch.tensor([centre + width / 2, centre, width, 2.4 + width / 4], dtype=D)
    alpha = ALPHA.get(fn, 0.0)
    dlo, dhi = slope_range(fn, alpha, lo, hi)
    z = _grid(lo, hi)
    d = _derivative(fn, z)
    if fn == "relu":  # the Clarke set at 0 is [0, 1]
        d = torch.where(z == 0, (dlo[:, None] + dhi[:, None]) / 2, d)
    assert bool((d >= dlo[:, None]).all()) and bool((d <= dhi[:, None]).all())
    ylo, yhi = image(fn, alpha, lo, hi)
    y = ACTIVATIONS.get(fn).fn(z, alpha)
    assert bool((y >= ylo[:, None]).all()) and bool((y <= yhi[:, None]).all())


def test_ranges_are_tight_on_small_intervals() -> None:
    """Not just sound: on a width-1e-6 interval the range is within 1e-5 of the exact derivative."""
    z = torch.linspace(-6, 6, 97, dtype=D)
    for fn in sorted(SUPPORTED - {"relu", "leaky_relu"}):
        dlo, dhi = slope_range(fn, ALPHA.get(fn, 0.0), z - 5e-7, z + 5e-7)
        d = _derivative(fn, z)
        assert float((dhi - dlo).max()) < 1e-5, fn
        assert float((d - dlo).abs().max()) < 1e-5, fn


@pytest.mark.parametrize("fn", sorted(CRITICAL))
def test_critical_point_enclosures(fn: str) -> None:
    """f' rises on (-c, c) and falls outside, c inside the stored enclosure: f'' > 0 on [0, c_lo] and
    f'' < 0 on [c_hi, 40] (sampled finely: |f'''| is small, so no sign change hides between samples)."""
    d, c_lo, c_hi = CRITICAL[fn]
    z = torch.linspace(0.0, 40.0, 400_001, dtype=D).requires_grad_(True)
    (d2,) = torch.autograd.grad(d(z).sum(), z)
    zs = z.detach()
    assert bool((d2[(zs > 0) & (zs <= c_lo)] > 0).all())
    tail = (zs >= c_hi) & (zs < 5.0)  # beyond, f'' underflows towards 0 from below
    assert bool((d2[tail] < 0).all())
    assert bool((d2[zs >= 5.0] <= 1e-12).all())
    # symmetry f'(-z) = 1 - f'(z), used for the minimum
    assert torch.allclose(d(-zs) + d(zs), torch.ones_like(zs), atol=1e-12)
    assert float(d(zs).max()) <= ACTIVATIONS.get(fn).lipschitz(0.0)
    assert math.isfinite(float(d(zs).min()))
