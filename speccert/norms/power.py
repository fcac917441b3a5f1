"""`power`: power iteration on A^T A through the real operator; a proven LOWER bound, never an upper one.

x <- A^T A x / ||A^T A x|| (A^T by autograd's vector-Jacobian product, which for a conv is the
conv_transpose with the right output_padding). Every iterate gives ||A x|| / ||x|| <= ||A||_2; the
final value is recomputed in float64 with its rounding error subtracted (speccert.norms.rounding), so
it is a proven lower bound. It converges to ||A||_2 from below; the iteration may run in float32 on
a GPU, only the final check is float64. A warm start (e.g. the plane wave attaining the FFT bound)
makes it converge in a few steps.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from speccert.norms.layer import LinearLayer, _cast
from speccert.norms.method import NormContext, NormMethod, register_method
from speccert.norms.result import LowerBound, NormResult
from speccert.norms.rounding import lower_from_product

Tensor = torch.Tensor


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


def _abs_op(layer: LinearLayer):  # noqa: ANN202 - an Op
    import dataclasses

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


@register_method
class PowerMethod(NormMethod):
    name = "power"
    kinds = ("lower",)
    summary = "power iteration on A^T A (autograd VJP); proven lower bound"

    def applies(self, layer: LinearLayer) -> bool:
        return True

    def memory_bytes(self, layer: LinearLayer, ctx: NormContext) -> int:
        return 8 * 6 * (layer.n_in + layer.n_out)

    def compute(self, layer: LinearLayer, ctx: NormContext) -> list[NormResult]:
        t0 = time.perf_counter()
        dtype = torch.float32 if ctx.device.type == "cuda" else torch.float64
        res = power_iteration(layer, ctx.device, dtype, ctx.max_iter, ctx.tol, ctx.warm_start, ctx.seed)
        return [
            LowerBound(
                res.lower,
                self.name,
                iterations=res.iterations,
                tolerance=ctx.tol,
                seconds=time.perf_counter() - t0,
            )
        ]
