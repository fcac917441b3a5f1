"""Linear lower and upper lines of elementwise activations on intervals (for the CROWN certificate).

For an activation f and per-unit intervals [lo, hi] of its input, `relax(fn, alpha, lo, hi)` returns
float64 tensors (a_lo, b_lo, a_up, b_up) with, for every real z in [lo, hi] and in exact arithmetic on
the stored floats,
    a_lo z + b_lo <= f(z) <= a_up z + b_up.
The slopes are free choices (any float is fine); validity is enforced through the intercepts:

- Stable units (ReLU/leaky ReLU with lo >= 0 or hi <= 0, identity): f is linear there, the lines are f
  itself (slope 1 or alpha, intercept 0): exact.
- Convex pieces (ReLU, leaky ReLU with 0 <= alpha <= 1, unstable): the lower line a z with a in
  [alpha, 1] lies below f on the whole real line (f(z) = max(z, alpha z) >= a z on both sides of 0), so
  b_lo = 0 is exact; the choice a = 1 where hi >= -lo, else alpha, is the usual adaptive one. The upper
  line has the chord's slope a_up = (f(hi) - f(lo)) / (hi - lo) as computed; since f - a_up z is convex,
  its maximum on [lo, hi] is at an end, so b_up = max over both ends e of f(e) - a_up e makes the line
  valid; each end's value is computed in float64 and raised by 4u (|f(e)| + |a_up e|) + 1e-300, which
  exceeds the rounding of a product, a subtraction and the leaky ReLU's own product alpha e.
- Sigmoid and tanh (`smooth` below): f is convex for z <= 0 and concave for z >= 0. On an interval
  within one of those halves a chord and a tangent are valid: the chord above a convex piece (below a
  concave one), the tangent at the midpoint below a convex piece (above a concave one). Intervals
across 0 get two lines with the chord's slope and proven intercepts (`_crossing`). A tangent line
  a (z - c) + f(c) is only as valid as its computed values: f(c) and f'(c) come from float64 library
  functions with a few ulps of error, so the intercept is moved by PAD (1 + |f(c)| + |a c|), far above
  those errors plus the rounding of the intercept's own arithmetic, and the tangent slope error is
  absorbed the same way: |a' - a| |z - c| <= PAD |a| |hi - lo| is added too.
- Softplus and ELU with 0 <= alpha <= 1 are convex everywhere: the midpoint tangent (at ELU's kink
  the subgradient 1) below and the chord above, widened the same way.
- SiLU, GELU and tanh-GELU (`_pieces`): both lines take the chord's slope a; their intercepts bound
  g(z) = f(z) - a z over [lo, hi] cut into PIECES equal pieces: on a piece [p, q] with a point m
  inside, |g(z) - g(m)| <= max |f' - a| max(q - m, m - p), and f' on [p, q] is in the proven range of
  speccert.bounds.local_slopes (its extremes at the ends or at the enclosed critical points). g(m)
  is widened by PAD like a tangent's value; the pieces share their computed ends, so they cover
  [lo, hi] exactly. The lines' gap to f is at most about max |f' - a| (hi - lo) / PIECES.
"""

from __future__ import annotations

import torch

from speccert.bounds.certificate import NotApplicable
from speccert.bounds.local_slopes import _forward, slope_range

Tensor = torch.Tensor
U = 2.0**-53
PAD = 1e-12
TINY = 1e-300
RELAXED = {
    "relu",
    "leaky_relu",
    "identity",
    "sigmoid",
    "tanh",
    "softplus",
    "elu",
    "silu",
    "gelu",
    "gelu_tanh",
}
PIECES = 16
Lines = tuple[Tensor, Tensor, Tensor, Tensor]


def supported(fn: str, alpha: float) -> bool:
    """Whether `relax` has lines for this activation."""
    return fn in RELAXED and (fn not in ("leaky_relu", "elu") or 0.0 <= alpha <= 1.0)


def _up_intercept(fe: Tensor, a: Tensor, e: Tensor) -> Tensor:
    """>= f(e) - a e in exact arithmetic, with f(e) computed to within u |f(e)| (module docstring)."""
    ae = a * e
    return (fe - ae) + 4 * U * (fe.abs() + ae.abs()) + TINY


def _convex(alpha: float, lo: Tensor, hi: Tensor) -> Lines:
    """Lines of f(z) = max(z, alpha z), 0 <= alpha <= 1 (ReLU: alpha = 0)."""
    one, zero = torch.ones_like(lo), torch.zeros_like(lo)
    a_stable = torch.where(lo >= 0, one, torch.full_like(lo, alpha))
    stable = (lo >= 0) | (hi <= 0)
    f_lo, f_hi = torch.where(lo >= 0, lo, alpha * lo), torch.where(hi >= 0, hi, alpha * hi)
    width = torch.where(stable, one, hi - lo)
    chord = (f_hi - f_lo) / width
    b_up = torch.maximum(_up_intercept(f_lo, chord, lo), _up_intercept(f_hi, chord, hi))
    a_lo = torch.where(stable, a_stable, torch.where(hi >= -lo, one, torch.full_like(lo, alpha)))
    a_up = torch.where(stable, a_stable, chord)
    return a_lo, zero, a_up, torch.where(stable, zero, b_up)


def _deriv(fn: str, z: Tensor, alpha: float = 0.0) -> Tensor:
    """f'(z) (at ELU's kink: 1, a subgradient since alpha <= 1)."""
    if fn == "softplus":
        return torch.sigmoid(z)
    if fn == "elu":
        return torch.where(z >= 0, torch.ones_like(z), alpha * torch.exp(z.clamp_max(0.0)))
    if fn == "sigmoid":
        s = torch.sigmoid(z)
        return s * (1.0 - s)
    t = torch.tanh(z)
    return 1.0 - t * t


def _convex_smooth(fn: str, alpha: float, lo: Tensor, hi: Tensor) -> Lines:
    """Softplus, ELU with 0 <= alpha <= 1 (convex everywhere): the tangent at the midpoint below, the
    chord above, both widened like the sigmoid's (module docstring)."""
    f_lo, f_hi = _forward(fn, alpha, lo), _forward(fn, alpha, hi)
    chord = (f_hi - f_lo) / (hi - lo).clamp_min(TINY)
    pad_chord = PAD * (1.0 + f_lo.abs() + f_hi.abs() + (chord * lo).abs() + (chord * hi).abs())
    b_up = torch.maximum(f_lo - chord * lo, f_hi - chord * hi) + pad_chord
    c = lo + (hi - lo) / 2
    a_t, f_c = _deriv(fn, c, alpha), _forward(fn, alpha, c)
    pad_t = PAD * (1.0 + f_c.abs() + (a_t * c).abs() + a_t.abs() * (hi - lo))
    return a_t, f_c - a_t * c - pad_t, chord, b_up


def _critical(fn: str, a: Tensor) -> Tensor:
    """The z >= 0 with f'(z) = a (an estimate: only used as a point where a bound is taken; 0 where
    a >= f'(0), no such point)."""
    if fn == "sigmoid":
        s = (1.0 + torch.sqrt((1.0 - 4.0 * a).clamp_min(0.0))) / 2
        z = torch.log(s / (1.0 - s).clamp_min(TINY))
    else:
        t = torch.sqrt((1.0 - a).clamp_min(0.0)).clamp_max(1.0 - 1e-16)
        z = torch.atanh(t)
    return torch.nan_to_num(z, nan=0.0, posinf=0.0)


def _crossing(fn: str, lo: Tensor, hi: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
    """(b_lo, b_up): a z + b_lo <= f(z) <= a z + b_up on [lo, hi] with lo < 0 < hi, for any slope a.

    g(z) = f(z) - a z is convex on [lo, 0] and concave on [0, hi]. Its maximum over [lo, 0] is at an
    end; over [0, hi] it is at most g(p) + |g'(p)| hi for ANY p in [0, hi] (a concave function lies
    below its tangent at p, and |z - p| <= hi), p taken near the critical point where f' = a so that
    g'(p) ~ 0. The minimum mirrors it: ends on [0, hi], g(q) - |g'(q)| |lo| for any q in [lo, 0]
    (f' is even, so q = -p). Library values of f and f' are widened by PAD (1 + |value|) and every
    g value by PAD times its terms."""

    def g(z: Tensor, sign: float) -> Tensor:
        fz = _forward(fn, 0.0, z)
        return fz - a * z + sign * PAD * (1.0 + fz.abs() + (a * z).abs())

    def slope_gap(z: Tensor) -> Tensor:
        d = _deriv(fn, z)
        return (d - a).abs() + PAD * (1.0 + d.abs() + a.abs())

    zero = torch.zeros_like(lo)
    crit = _critical(fn, a)
    p = torch.minimum(crit, hi)
    q = torch.maximum(-crit, lo)
    top = torch.maximum(torch.maximum(g(lo, 1.0), g(zero, 1.0)), g(hi, 1.0))
    top = torch.maximum(top, g(p, 1.0) + slope_gap(p) * hi * (1.0 + PAD))
    bottom = torch.minimum(torch.minimum(g(lo, -1.0), g(zero, -1.0)), g(hi, -1.0))
    bottom = torch.minimum(bottom, g(q, -1.0) - slope_gap(q) * lo.abs() * (1.0 + PAD))
    return bottom, top


def _smooth(fn: str, lo: Tensor, hi: Tensor) -> Lines:
    """Sigmoid / tanh: chord and midpoint tangent on one side of 0, the chord's slope with proven
    intercepts across 0 (docstring)."""
    f_lo, f_hi = _forward(fn, 0.0, lo), _forward(fn, 0.0, hi)
    width = (hi - lo).clamp_min(TINY)
    chord = (f_hi - f_lo) / width
    # chord: above a convex piece, below a concave one; exact validity from the end values
    pad_chord = PAD * (1.0 + f_lo.abs() + f_hi.abs() + (chord * lo).abs() + (chord * hi).abs())
    b_chord_up = torch.maximum(f_lo - chord * lo, f_hi - chord * hi) + pad_chord
    b_chord_lo = torch.minimum(f_lo - chord * lo, f_hi - chord * hi) - pad_chord
    c = lo + (hi - lo) / 2
    a_t, f_c = _deriv(fn, c), _forward(fn, 0.0, c)
    pad_t = PAD * (1.0 + f_c.abs() + (a_t * c).abs() + a_t.abs() * (hi - lo))
    b_t = f_c - a_t * c
    convex, concave = hi <= 0, lo >= 0
    cross = ~convex & ~concave
    safe_lo, safe_hi = (
        torch.where(cross, lo, -torch.ones_like(lo)),
        torch.where(cross, hi, torch.ones_like(hi)),
    )
    safe_chord = torch.where(cross, chord, torch.zeros_like(chord))
    x_lo, x_up = _crossing(fn, safe_lo, safe_hi, safe_chord)
    a_lo = torch.where(convex, a_t, chord)
    b_lo = torch.where(convex, b_t - pad_t, torch.where(concave, b_chord_lo, x_lo))
    a_up = torch.where(concave, a_t, chord)
    b_up = torch.where(concave, b_t + pad_t, torch.where(convex, b_chord_up, x_up))
    return a_lo, b_lo, a_up, b_up


def _pieces(fn: str, lo: Tensor, hi: Tensor) -> Lines:
    """SiLU / GELU / tanh-GELU: the chord's slope, intercepts bounded piece by piece (docstring)."""
    f_lo, f_hi = _forward(fn, 0.0, lo), _forward(fn, 0.0, hi)
    a = (f_hi - f_lo) / (hi - lo).clamp_min(TINY)
    b_lo = torch.full_like(lo, torch.inf)
    b_up = torch.full_like(lo, -torch.inf)
    ends = [lo + (hi - lo) * (i / PIECES) for i in range(PIECES)] + [hi]
    for p, q in zip(ends[:-1], ends[1:], strict=True):
        q = torch.maximum(p, q)  # monotone ends (rounding), so the pieces still cover [lo, hi]
        m = p + (q - p) / 2
        half = torch.maximum(q - m, m - p).clamp_min(0.0) * (1.0 + 1e-15) + TINY
        dlo, dhi = slope_range(fn, 0.0, p, q)
        gap = torch.maximum((dhi - a).abs(), (dlo - a).abs()) * (1.0 + 1e-15) + PAD
        f_m = _forward(fn, 0.0, m)
        g_m = f_m - a * m
        spread = gap * half * (1.0 + 1e-15) + PAD * (1.0 + f_m.abs() + (a * m).abs())
        b_lo = torch.minimum(b_lo, g_m - spread)
        b_up = torch.maximum(b_up, g_m + spread)
    return a, b_lo, a, b_up


def relax(fn: str, alpha: float, lo: Tensor, hi: Tensor) -> Lines:
    """(a_lo, b_lo, a_up, b_up): a_lo z + b_lo <= f(z) <= a_up z + b_up on [lo, hi] (module docstring)."""
    if fn == "identity":
        one, zero = torch.ones_like(lo), torch.zeros_like(lo)
        return one, zero, one, zero
    if fn == "relu":
        return _convex(0.0, lo, hi)
    if fn == "leaky_relu" and 0.0 <= alpha <= 1.0:
        return _convex(alpha, lo, hi)
    if fn in ("softplus", "elu") and 0.0 <= alpha <= 1.0:
        if not bool((torch.isfinite(lo) & torch.isfinite(hi)).all()):
            raise NotApplicable("infinite pre-activation bounds")
        return _convex_smooth(fn, alpha, lo, hi)
    if fn in ("sigmoid", "tanh"):
        if not bool((torch.isfinite(lo) & torch.isfinite(hi)).all()):
            raise NotApplicable("infinite pre-activation bounds")
        return _smooth(fn, lo, hi)
    if fn in ("silu", "gelu", "gelu_tanh"):
        if not bool((torch.isfinite(lo) & torch.isfinite(hi)).all()):
            raise NotApplicable("infinite pre-activation bounds")
        return _pieces(fn, lo, hi)
    raise NotApplicable(f"the crown certificate has no linear relaxation of {fn}")


__all__ = ["RELAXED", "relax", "supported"]
