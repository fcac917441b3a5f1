"""A bound on the float64 rounding error of the logits computed at a point (first order in u = 2^-53).

The certified function is the exact real-number network; the margins certify() uses come from a float64
forward pass of the folded graph. Every node v adds a local rounding error e_v when it is computed from
its (already rounded) inputs, and that error reaches the logits amplified by at most D_v, the Lipschitz
bound of the map node v -> logits (a reverse pass over the DAG: D_out = 1, D_u = sum over consumers c of
D_c * lambda_c, lambda_c the local factor of c: its norm bound, activation slope, pooling factor, 1 for
Add/Concat). So ||f_computed(x) - f(x)|| <= sum_v D_v e_v(x) (+ higher-order terms in u), with

    linear node  y = A x + b:  e_v <= gamma(k + 2) (a_v ||x_in|| + ||b||)   (Higham: |fl(Ax) - Ax| <= gamma_k |A||x|)
        k: terms per output (fan-in), a_v >= || |A| ||_2 (Schur test sqrt(max row sum * max column sum)
        of |A|, from the weights; ||A||_2 for the non-negative pooling matrices; exact ops: 0)
    activation, PRelu:         e_v <= 64 u ||v||      (elementwise library functions: a few ulps)
    Standardize (blocks of n): e_v <= gamma(n + 5) (||x_in|| / sqrt(eps) + sqrt(numel)) + 64 u ||v||
    L2Pool (windows of n):     e_v <= gamma(n + 5) ||v||   (squares, sum, scaling; sqrt halves it, adds u)
    Householder:               e_v <= 64 u ||x_in||  (3 roundings per output and the sin/cos; a wrong branch
                               near s = 0 costs 2|s| <= 2 |fl(s) - s|)
    Center (fibres of n):      e_v <= gamma(n + 2) ||x_in|| + 64 u ||v||   (the mean, then a subtraction)
    Add:                       e_v <= u ||v||;   max-pool, Concat, Reshape, Transpose, Pad, Slice,
                               Sort, Extremum (max/min of two tensors): exact.

certify() lowers every margin by SAFETY * sqrt(2) * that sum (SAFETY = 16 covers the neglected
higher-order terms and library kernels that are a few times worse than the textbook bound).
The float32 pass of certify has its own rigorous model, speccert.bounds.float32_error (no safety
factor, BatchNorm recomputation, input rounding, denormals), used only where `ieee_float32(dev)`: the
CPU, with the TF32/bf16 "fast float32" modes off (certify also disables NNPACK, whose Winograd/FFT
convolutions are not covered). On a GPU cuDNN may pick TF32, FFT or Winograd kernels, so certify stays
in float64 there. `unit` other than U is kept for experiments, not used by certify.
softplus returns x above torch's threshold 20, off by log1p(exp(-20)) <= 2.07e-9 in any precision: an
absolute error per element, added as 2.07e-9 sqrt(n) to the activation's term.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from speccert.bounds.compose import downstream, standardize_factor, upper_norms
from speccert.errors import InternalError
from speccert.ir import (
    INPUT,
    Activation,
    Add,
    AvgPool,
    BatchNorm,
    Center,
    Conv,
    Graph,
    Householder,
    L2Pool,
    Linear,
    PRelu,
    Standardize,
)
from speccert.ir import Affine as AffineOp
from speccert.norms import UpperBound

Tensor = torch.Tensor
U = 2.0**-53
FLOAT32_UNIT = 2.0**-24
SAFETY = 16.0
EXACT = ("Reshape", "Transpose", "Pad", "Concat", "MaxPool", "Slice", "Sort", "Extremum")
ABSOLUTE_ERROR = {"softplus": 2.07e-9}  # per element, beyond a few ulps (see the module doc)


def ieee_float32(device: torch.device) -> bool:
    """True where torch computes float32 as IEEE float32 (no TF32/bf16 substitution): the CPU only."""
    if device.type != "cpu" or torch.get_float32_matmul_precision() != "highest":
        return False
    for part in ("matmul", "conv"):
        mode = getattr(getattr(torch.backends.mkldnn, part, None), "fp32_precision", None)
        if mode not in (None, "ieee", "none"):
            return False
    return True


class _Relaxed:
    """float64 with a relative margin of 8 u per product (the reverse pass's arithmetic): D values are
    a few ulps above their exact sums, far below what SAFETY covers."""

    def const(self, x: float) -> float:
        return x

    def mul(self, factor: float, value: float) -> float:
        return factor * value * (1 + 8 * U)

    def add(self, a: float, b: float) -> float:
        return a + b

    def square(self, a: float) -> float:
        return a * a * (1 + 8 * U)

    def hypot(self, xs: Sequence[float]) -> float:
        return math.sqrt(sum(v * v for v in xs)) * (1 + 8 * U)


def downstream_lipschitz(graph: Graph, uppers: Mapping[str, UpperBound]) -> dict[str, float]:
    """D_v >= Lipschitz constant of (value of node v) -> logits, summed over every path: the reverse
    pass of speccert.bounds.compose (its per-op local factors: norm bound, slope, pooling, 1)."""
    norm_of = upper_norms({name: ub.value for name, ub in uppers.items()})
    return downstream(graph, norm_of, _Relaxed())


def _abs_norm_and_fan_in(
    graph: Graph, name: str, uppers: Mapping[str, UpperBound]
) -> tuple[float, int, float]:
    """(a_v >= || |A| ||_2, fan-in k, ||b||) of a linear node."""
    node = graph.node(name)
    op = node.op
    if isinstance(op, Linear):
        w = op.weight.detach().abs().double()
        b = float(op.bias.detach().double().norm()) if op.bias is not None else 0.0
        # || |W| ||_2 <= min(Schur test, || |W| ||_F = ||W||_F): either can be the smaller one.
        schur = math.sqrt(float(w.sum(1).max()) * float(w.sum(0).max()))
        return min(schur, float(w.norm())), w.shape[1], b
    if isinstance(op, Conv):
        w = op.weight.detach().abs().double()  # [c_out, c_in/g, *k]
        rows = float(w.flatten(1).sum(1).max())  # one output: its whole receptive field
        g = op.groups
        cols = float(w.reshape(g, w.shape[0] // g, w.shape[1], -1).sum((1, 3)).max())  # one input: all taps
        b = (
            float(op.bias.detach().double().norm()) * math.sqrt(math.prod(node.shape[1:]))
            if op.bias is not None
            else 0.0
        )
        return math.sqrt(rows * cols), int(w[0].numel()), b
    if isinstance(op, (BatchNorm, AffineOp)):
        # y = s x + t: one multiply and one add per element; ||b|| bounded by the constant vector.
        t = op.scale_shift()[1] if isinstance(op, BatchNorm) else op.shift
        if isinstance(op, BatchNorm):  # per channel (axis 0): [C] -> [C, 1, ..., 1] to broadcast
            t = t.reshape((-1,) + (1,) * (len(node.shape) - 1))
        full = torch.zeros(node.shape, dtype=torch.float64)
        return uppers[name].value, 2, float((t.detach().double() + full).norm())
    if isinstance(op, AvgPool):
        return uppers[name].value, math.prod(op.kernel), 0.0
    n_in = math.prod(graph.shape_of(node.inputs[0]))
    return uppers[name].value * math.sqrt(n_in), n_in, 0.0  # ||A||_F <= sqrt(rank) ||A||_2


class ErrorModel:
    """Per node: (weight D_v * c_v, which norm it multiplies). `bound(acts)` -> per-sample error bound."""

    def __init__(self, graph: Graph, uppers: Mapping[str, UpperBound], unit: float = U) -> None:
        d = downstream_lipschitz(graph, uppers)

        def gamma_u(k: int) -> float:
            return k * unit / (1.0 - k * unit)

        self.terms: list[
            tuple[str, float, float]
        ] = []  # (name of the tensor to take the norm of, coef, const)
        for node in graph.nodes:
            op = node.op
            if node.op_type in EXACT or d[node.name] == 0.0:
                continue
            if type(op).linear:
                a, k, b = _abs_norm_and_fan_in(graph, node.name, uppers)
                gk = gamma_u(k + 3)
                self.terms.append((node.inputs[0], d[node.name] * gk * a, d[node.name] * gk * b))
            elif isinstance(op, (Activation, PRelu)):  # PRelu: one product per element
                absolute = ABSOLUTE_ERROR.get(getattr(op, "fn", ""), 0.0) * math.sqrt(math.prod(node.shape))
                self.terms.append((node.name, d[node.name] * 64 * unit, d[node.name] * absolute))
            elif isinstance(op, Add):
                self.terms.append((node.name, d[node.name] * unit, 0.0))
            elif isinstance(op, Standardize):
                # The mean's error gamma(n) ||x_blk|| is amplified by 1/s <= 1/sqrt(eps); variance, sqrt
                # and division add gamma(n + 5) relative error to outputs of block norm <= sqrt(n).
                n = math.prod(node.shape[len(node.shape) - op.axes :])
                gk = gamma_u(n + 5)
                f, numel = standardize_factor(op), math.sqrt(math.prod(node.shape))
                self.terms.append((node.inputs[0], d[node.name] * gk * f, d[node.name] * gk * numel))
                self.terms.append((node.name, d[node.name] * 64 * unit, 0.0))
            elif isinstance(op, Householder):
                # Per pair z = (x, y): each output is two products and a sum of sin/cos values that are
                # off by an ulp: <= 8 u (|x| + |y|) <= 8 sqrt(2) u ||z||; where the computed selector has the
                # wrong sign, |s| <= |fl(s) - s| <= 8 sqrt(2) u ||z|| and the branches differ by 2 |s|
                # (they agree at s = 0): under 64 u ||z|| per pair, so for the whole tensor.
                self.terms.append((node.inputs[0], d[node.name] * 64 * unit, 0.0))
            elif isinstance(op, L2Pool):
                # q = multiplier * mean(x^2) per window: squares (u), a sum of n (gamma(n - 1)), the
                # division and the product (2 u) give fl(q) = q (1 + d), |d| <= gamma(n + 3), all terms
                # being >= 0; sqrt halves d and rounds once more: relative error <= gamma(n + 5) per entry.
                n = math.prod(op.kernel)
                self.terms.append((node.name, d[node.name] * gamma_u(n + 5), 0.0))
            elif isinstance(op, Center):
                # Per fibre of n entries the computed mean is off by <= gamma(n + 1) mean|x_f| <=
                # gamma(n + 1) ||x_f|| / sqrt(n) (any summation order), subtracted from n entries, each
                # subtraction rounded (u |y_i|): gamma(n + 1) ||x_f|| + u ||y_f||; squares summed.
                shape_in = graph.shape_of(node.inputs[0])
                n = math.prod(shape_in[a] for a in op.axes)
                self.terms.append((node.inputs[0], d[node.name] * gamma_u(n + 2), 0.0))
                self.terms.append((node.name, d[node.name] * 64 * unit, 0.0))
            else:  # a new op type must say how it rounds, never be taken as exact by default
                raise InternalError(f"no rounding-error rule for {node.op_type} (node '{node.name}')")

    def bound(self, acts: dict[str, Tensor]) -> Tensor:
        """SAFETY * sqrt(2) * sum_v D_v e_v per sample: an allowance for every margin f_y - f_j."""
        x = acts[INPUT]
        total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        for name, coef, const in self.terms:
            # Norms in float64 (rounded up by 1e-6 relative, far above the error of a float32 sum).
            norm = acts[name].reshape(x.shape[0], -1).to(torch.float64).norm(dim=1) * (1 + 1e-6)
            total = total + coef * norm + const
        return SAFETY * math.sqrt(2.0) * total
