"""The Gram chain: Gram iteration (Delattre et al., ICML 2023), a proven upper bound at every step.

With G_0 = A and G_{k+1} = G_k^H G_k, ||A||_2 = ||G_k||_2^(1/2^k) <= ||G_k||_F^(1/2^k), converging
super-linearly. In floating point we keep every iterate rescaled by a power of two (exact) and account
for the product's rounding error E_k (|E_k| <= 2 gamma(m+4) |G_k|^H |G_k| entrywise, so
||E_k||_F <= 2 gamma(m+4) ||G_k||_F^2). Since ||G_k||_2^2 = ||G_k^H G_k||_2 <= ||fl(G_k^H G_k)||_2 + ||E_k||_2,
the chain b_K = ||G_K||_F, b_k = sqrt(2^{e_{k+1}} b_{k+1} + eps_k) (each step rounded up) ends in a
proven b_0 >= ||A||_2. Batched: `gram_upper` takes [..., m, n] (frequency blocks, real or complex).
Used by the `gram` method (weights, and torus frequency blocks through `max_gram_bound`) and by the
reshaped-kernel methods (`fantastic4`, `lmt`) for the norms of their reshaped kernels.
"""

from __future__ import annotations

import torch

from speccert.norms.result import round_up
from speccert.norms.rounding import U, gamma

Tensor = torch.Tensor


def _pow2_exponent(x: Tensor) -> Tensor:
    """e with 2^e >= x roughly (frexp exponent); 0 where x == 0."""
    _, e = torch.frexp(x)
    return torch.where(x > 0, e, torch.zeros_like(e))


def scale2(x: Tensor, e: Tensor) -> Tensor:
    """x * 2^e per batch entry (exact: only exponents change), for real or complex [B, m, n]."""
    ee = e.to(torch.float64).reshape(-1, *([1] * (x.dim() - 1)))
    if x.is_complex():
        return torch.view_as_complex(
            torch.ldexp(torch.view_as_real(x.resolve_conj()), ee[..., None]).contiguous()
        )
    return torch.ldexp(x, ee)


class GramChain:
    """Batched Gram iteration whose state can be advanced and bounded at any step."""

    def __init__(self, a: Tensor) -> None:
        if a.shape[-2] < a.shape[-1]:
            a = a.mH
        h = a.reshape(-1, *a.shape[-2:])
        fro = torch.linalg.matrix_norm(h) * (1.0 + gamma(h.shape[-1] * h.shape[-2] + 2.0))
        self.e0 = _pow2_exponent(fro)
        self.h = scale2(h, -self.e0)
        self.exps: list[Tensor] = []
        self.errs: list[Tensor] = []

    @property
    def steps(self) -> int:
        return len(self.exps)

    def step(self) -> None:
        h = self.h
        f = torch.linalg.matrix_norm(h) * (1.0 + gamma(h.shape[-1] * h.shape[-2] + 2.0))
        g = h.mH @ h
        self.errs.append(2.0 * gamma(h.shape[-2] + 4.0) * f * f)
        e = _pow2_exponent(torch.linalg.matrix_norm(g))
        self.exps.append(e)
        self.h = scale2(g, -e)

    def bound(self) -> Tensor:
        """Proven upper bounds on the 2-norms of the original matrices (float64, rounded up)."""
        h = self.h
        b = torch.linalg.matrix_norm(h) * (1.0 + gamma(h.shape[-1] * h.shape[-2] + 2.0))
        up = 1.0 + 4.0 * U
        for e, err in zip(reversed(self.exps), reversed(self.errs), strict=True):
            b = torch.sqrt(scale2(b * up, e) * up + err) * up * up
        return scale2(b * up, self.e0) * up


def gram_upper(a: Tensor, steps: int = 6) -> Tensor:
    """Proven upper bounds on ||a[i]||_2 for a batch of float64/complex128 matrices a [..., m, n]."""
    chain = GramChain(a)
    for _ in range(steps):
        chain.step()
    return chain.bound().reshape(a.shape[:-2])


def gram_upper_scalar(a: Tensor, steps: int = 12) -> float:
    return round_up(float(gram_upper(a.to(torch.float64) if not a.is_complex() else a, steps)))


def max_gram_bound(blocks: Tensor, floor: float = 0.0, steps: int = 12) -> tuple[float, int]:
    """(proven upper bound on max_i ||blocks[i]||_2, its index) by a fixed `steps`-step Gram iteration on
    every block (a `speccert.norms.torus.BlockBound`; `floor` is not needed by this bound)."""
    up = gram_upper(blocks, steps)
    i = int(torch.argmax(up))
    return float(up[i]), i
