"""Krylov iterations on A^T A through the real operator, and the float64 check that turns their last
vector into a proven LOWER bound (never an upper one).

`certify_lower(layer, x)`: ||A x|| / ||x|| recomputed in float64 with its rounding error subtracted
(speccert.norms.rounding). Soundness never depends on an iteration: its vector is only a candidate,
so iterations may run in float32 (oneDNN / tensor cores), and loss of orthogonality or an early stop
can only make the bound less tight, never wrong.

`power_iteration`: x <- A^T A x / ||A^T A x|| (A^T by autograd's vector-Jacobian product, which for a
conv is the conv_transpose with the right output_padding). Every iterate gives ||A x|| / ||x|| <=
||A||_2; it converges to ||A||_2 from below. A warm start (e.g. the plane wave attaining the torus
bound) makes it converge in a few steps.

`lanczos`: the top singular values of conv layers are clustered (random or trained), where power
iteration stalls ~0.5% below the truth after 100 steps. Lanczos with full re-orthogonalisation
converges to the top of a cluster in far fewer operator applications (Kuczynski & Wozniakowski:
relative error ~ (log n / k)^2 after k steps, against ~ log n / k for power iteration). Each step is one
forward and one backward pass of the layer (A^T A q by autograd with the output as the cotangent).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from speccert.ir.ops import Op
from speccert.norms.layer import LinearLayer, _cast
from speccert.norms.rounding import lower_from_product

Tensor = torch.Tensor
NEAR = 5e-5  # lanczos: stop once the Ritz value is this close (relative) to a known upper bound


@dataclass(frozen=True)
class PowerResult:
    lower: float
    estimate: float
    iterations: int
    vector: Tensor


def _fan_in(layer: LinearLayer) -> int:
    """An upper bound on the length of any dot product the op computes: n_in (generous, always sound)."""
    return layer.n_in


def certify_lower(layer: LinearLayer, x: Tensor) -> float:
    """A proven lower bound ||A x|| / ||x|| computed in float64 with its rounding error removed."""
    xd = x.detach().to(torch.float64).reshape(1, *layer.in_shape)
    xd = xd / torch.linalg.norm(xd)
    with torch.no_grad():
        ax = layer.apply(xd)
        abs_layer = LinearLayer(layer.name, _abs_op(layer), layer.in_shape, layer.out_shape)
        abs_ax = abs_layer.apply(xd.abs())
    return lower_from_product(
        float(torch.linalg.norm(ax)),
        float(torch.linalg.norm(abs_ax)),
        float(torch.linalg.norm(xd)),
        _fan_in(layer),
        max(layer.n_in, layer.n_out),
    )


def _abs_op(layer: LinearLayer) -> Op:
    op = _cast(layer.op, torch.empty(0, dtype=torch.float64))
    changes = {
        f.name: getattr(op, f.name).abs()
        for f in dataclasses.fields(op)
        if isinstance(getattr(op, f.name), Tensor) and getattr(op, f.name).is_floating_point()
    }
    return dataclasses.replace(op, **changes) if changes else op


def power_iteration(
    layer: LinearLayer,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
    max_iter: int = 100,
    tol: float = 1e-6,
    x0: Tensor | None = None,
    seed: int = 0,
    fixed_steps: bool = False,
) -> PowerResult:
    """Power iteration on A^T A; returns a proven lower bound, the last estimate and the vector."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    if x0 is None:
        x = torch.randn((1, *layer.in_shape), generator=gen, dtype=torch.float64)
    else:
        # A warm start may sit exactly in an invariant subspace missing the top singular vector:
        # a little noise keeps every direction in play.
        x = x0.reshape(1, *layer.in_shape).to(torch.float64)
        x = x / torch.linalg.norm(x).clamp_min(1e-300)
        noise = torch.randn((1, *layer.in_shape), generator=gen, dtype=torch.float64)
        x = x + 1e-2 * noise / torch.linalg.norm(noise)
    x = x.to(device=device, dtype=dtype)
    x = x / torch.linalg.norm(x)
    adjoint = layer.vjp(dtype, device)
    op = LinearLayer(layer.name, _cast(layer.op, x), layer.in_shape, layer.out_shape)
    est, it = 0.0, 0
    with torch.no_grad():
        for it in range(1, max_iter + 1):
            y = op.apply(x)
            new = float(torch.linalg.norm(y))
            z = adjoint(y)
            nz = float(torch.linalg.norm(z))
            if nz == 0.0 or not math.isfinite(nz):
                break
            x = z / nz
            converged = abs(new - est) <= tol * max(new, 1e-300)
            est = new
            if converged and not fixed_steps and it >= 5:
                break
    return PowerResult(certify_lower(layer, x), est, it, x.detach().cpu())


def _gram_apply(
    layer: LinearLayer, dtype: torch.dtype, device: torch.device | str
) -> Callable[[Tensor], tuple[Tensor, float]]:
    """q -> (A^T A q, ||A q||) with one forward and one backward pass."""
    op = LinearLayer(
        layer.name,
        _cast(layer.op, torch.empty(0, dtype=dtype, device=device)),
        layer.in_shape,
        layer.out_shape,
    ).op

    def apply(q: Tensor) -> tuple[Tensor, float]:
        x = q.reshape(1, *layer.in_shape).detach().requires_grad_(True)
        with torch.enable_grad():
            out = op.forward(x)
            (g,) = torch.autograd.grad(out, x, grad_outputs=out.detach())
        return g.reshape(-1), float(torch.linalg.vector_norm(out))

    return apply


def _lanczos_start(n: int, seed: int, x0: Tensor | None) -> Tensor:
    """The unit float64 start vector: seeded noise, or a warm start x0 plus a little noise."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    start = torch.randn(n, generator=gen, dtype=torch.float64)
    if x0 is not None:  # a warm start plus a little noise, so no direction is missing
        w0 = x0.reshape(-1).to(torch.float64)
        start = w0 / torch.linalg.vector_norm(w0).clamp_min(1e-300) + 1e-2 * start / torch.linalg.vector_norm(
            start
        )
    unit: Tensor = start / torch.linalg.vector_norm(start)
    return unit


def _lanczos_step(
    apply: Callable[[Tensor], tuple[Tensor, float]],
    basis: Tensor,
    j: int,
    alpha: list[float],
    beta: list[float],
) -> tuple[Tensor, float]:
    """One Lanczos step from basis[j]: appends alpha_j, returns the re-orthogonalised residual and its norm."""
    w, _ = apply(basis[j])
    alpha.append(float(basis[j] @ w))
    # The three-term recurrence first, so that `before` measures what full re-orthogonalisation
    # acts on: a second pass is then needed only on real cancellation (rare), not at every step.
    w = w - alpha[-1] * basis[j]
    if j > 0:
        w = w - beta[-1] * basis[j - 1]
    before = float(torch.linalg.vector_norm(w))
    w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)  # full re-orthogonalisation
    b = float(torch.linalg.vector_norm(w))
    if b < 0.7 * before:  # cancellation: once more (Kahan-Parlett "twice is enough")
        w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        b = float(torch.linalg.vector_norm(w))
    return w, b


def _top_ritz(alpha: list[float], beta: list[float], basis: Tensor) -> tuple[float, Tensor]:
    """The top Ritz value of the tridiagonal (alpha, beta) and its Ritz vector in `basis` (rows)."""
    t = torch.diag(torch.tensor(alpha, dtype=torch.float64))
    if beta:
        off = torch.tensor(beta, dtype=torch.float64)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    vals, vecs = torch.linalg.eigh(t)
    return float(vals[-1]), vecs[:, -1].to(device=basis.device, dtype=basis.dtype) @ basis


def _lanczos_converged(theta: float, theta_prev: float, tol: float, stop_at: float | None) -> bool:
    """Whether the top Ritz value stalled or is NEAR the known upper bound `stop_at` (see `lanczos`)."""
    stall = tol
    if stop_at is not None and theta > 0:
        # Progress far below the bracket's gap cannot change it: stop (see the docstring).
        stall = max(tol, 0.01 * (stop_at * stop_at / theta - 1.0))
    near = stop_at is not None and math.sqrt(max(theta, 0.0)) * (1.0 + NEAR) >= stop_at
    return near or abs(theta - theta_prev) <= stall * abs(theta)


def lanczos(
    layer: LinearLayer,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    max_iter: int = 64,
    tol: float = 1e-6,
    x0: Tensor | None = None,
    seed: int = 0,
    stop_at: float | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> PowerResult:
    """Lanczos on A^T A (full re-orthogonalisation); returns the proven lower bound of its Ritz vector.

    Stops when the top Ritz value moves by < tol (relative) over 4 steps, or, given `stop_at` (a known
    upper bound), when sqrt(Ritz value) is within a relative NEAR of it (the bracket is then tight) or
    moves by < 1% of the bracket's relative gap over 4 steps (the gap is then the upper bound's).
    `on_step(step, max_steps)` is called before each step (progress displays).
    """
    n = layer.n_in
    k_max = max(2, min(max_iter, n))
    q = _lanczos_start(n, seed, x0).to(device=device, dtype=dtype)
    apply = _gram_apply(layer, dtype, device)
    basis = torch.zeros((k_max + 1, n), dtype=dtype, device=device)
    basis[0] = q
    alpha: list[float] = []
    beta: list[float] = []
    theta_prev, theta, ritz = 0.0, 0.0, q
    steps = 0
    with torch.no_grad():
        for j in range(k_max):
            if on_step is not None:
                on_step(j, k_max)
            w, b = _lanczos_step(apply, basis, j, alpha, beta)
            steps = j + 1
            done = b <= 1e-12 * max(abs(alpha[0]), 1e-300) or not math.isfinite(b)
            if steps % 4 == 0 or done or steps == k_max:
                theta, ritz = _top_ritz(alpha, beta, basis[: j + 1])
                if done or _lanczos_converged(theta, theta_prev, tol, stop_at):
                    break
                theta_prev = theta
            if done:
                break
            beta.append(b)
            basis[j + 1] = w / b
    return PowerResult(certify_lower(layer, ritz), math.sqrt(max(theta, 0.0)), steps, ritz.detach().cpu())
