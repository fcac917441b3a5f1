"""A rigorous bound on the float32 rounding error of the logits, evaluated in the float32 pass itself.

The certified function is the exact real-number network of the folded graph (float64 weights from the
model file) at the user's input x. The fast pass computes it in float32: x and every weight are rounded
to float32, and every node is evaluated in float32 from its already-rounded inputs. With x_v the
computed value of node v and e_v the error of computing v from its computed inputs, telescoping over the
DAG in topological order gives, exactly (no higher-order terms),

    ||f_float32(x) - f(x)||_2 <= sum_v D_v e_v,    |error of f_i - f_j| <= sqrt(2) sum_v D_v e_v,

D_v the Lipschitz bound of the exact map (value of v) -> logits, summed over every path (the reverse
pass of speccert.bounds.compose). Each e_v is bounded from the norms of the computed tensors, worst case
over the order of every sum (u = 2^-24, gamma(k) = k u / (1 - k u), T = 2^-126 the smallest normal):

    input:           e <= u/(1-u) ||x_32|| + T sqrt(n)                 (x rounded to float32)
    Linear/Conv:     e <= gamma(k+3) (a ||x_in|| + ||b||) + T sqrt(m) (2k + 4 + k max|W|)
                     k the reduction length (fan-in), a >= || |W| ||_2 (Schur test, or ||W||_F),
                     +1 for rounding W to float32, +1 for the bias, +1 spare
    BatchNorm:       e <= gamma(16) (max|s| ||x_in|| + || |beta| + |mean s| ||) + underflow
                     (scale s = w / sqrt(var + eps) and shift recomputed in float32 by the kernel)
    Affine:          e <= gamma(5) (max|s| ||x_in|| + ||t||) + underflow
    AvgPool (k taps) as Linear with a = its norm; other linear ops: a = ||A|| sqrt(n_in), k = n_in
    relu, identity:  e <= 2 T sqrt(m)                                   (flushed denormals only)
    other activations: e <= 64 u (||v|| + ||x_in|| + sqrt(m)) + ABS sqrt(m) + 4 T sqrt(m)
                     (a library function is assumed within 64 ulps of |f(x)| + |x| + 1: covers
                     exp(x) - 1 and 0.5 x (1 + erf) cancellations; softplus' threshold is ABS)
    Add:             e <= u ||v|| + 2 T sqrt(m);     MaxPool: 2 T sqrt(m);   copies: exact

T terms cover flush-to-zero / denormals-are-zero kernels (with gradual underflow the error is smaller);
an overflow gives an infinite norm, hence an infinite allowance, and the point goes to float64. Norms
are float32 sums of squares bounded upward (gamma(n+1), n T), then square-rooted in float64 and rounded
up. This holds for kernels that compute float32 dot products as float32 sums of float32 products in any
order (FMA included): IEEE float32 on the CPU (`ieee_float32`), NNPACK off (Winograd/FFT are not
covered). Standardize (LayerNorm/GroupNorm) has no rule here: such graphs stay in float64.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from speccert.bounds.float_error import ABSOLUTE_ERROR, EXACT, _abs_norm_and_fan_in, downstream_lipschitz
from speccert.errors import SpeccertError
from speccert.ir import INPUT, Activation, Add, BatchNorm, Graph, MaxPool, Node
from speccert.ir import Affine as AffineOp
from speccert.norms import UpperBound

Tensor = torch.Tensor
UNIT32 = 2.0**-24
TINY32 = 2.0**-126
LIBRARY_ULPS = 64.0
EXACT_ACTIVATIONS = ("identity", "relu")
# The bound is summed in float64 from a few hundred non-negative terms, each a few ulps high or low.
SUM_SLACK = 1.0 + 2.0**-40


class Float32NotCovered(SpeccertError):
    """The graph holds an op without a float32 rounding rule: certify stays in float64 (with why)."""


def gamma32(k: int) -> float:
    """gamma(k) = k u / (1 - k u) for float32's u = 2^-24, rounded up (Higham, Lemma 3.1)."""
    if k * UNIT32 >= 0.5:
        raise Float32NotCovered(f"a reduction of {k} terms is too long for a float32 error bound")
    return k * UNIT32 / (1.0 - k * UNIT32) * (1.0 + 2.0**-50)


@dataclass(frozen=True)
class Term:
    """coef * ||value of `tensor`|| + const, per sample (tensor "" = no norm)."""

    tensor: str
    coef: float
    const: float


def _numel(node: Node) -> int:
    return math.prod(node.shape)


def _batchnorm_terms(node: Node, d: float) -> list[Term]:
    op = node.op
    assert isinstance(op, BatchNorm)
    scale, _ = op.scale_shift()
    scale = scale.detach().double()
    spread = op.bias.detach().double().abs() + (op.mean.detach().double() * scale).abs()
    full = torch.zeros(node.shape, dtype=torch.float64) + spread.reshape((-1,) + (1,) * (len(node.shape) - 1))
    g = gamma32(16)
    smax = float(scale.abs().max())
    under = TINY32 * math.sqrt(_numel(node)) * (8 + smax)
    return [Term(node.inputs[0], d * g * smax, d * (g * float(full.norm()) + under))]


def _linear_terms(graph: Graph, node: Node, d: float, uppers: Mapping[str, UpperBound]) -> list[Term]:
    if isinstance(node.op, BatchNorm):
        return _batchnorm_terms(node, d)
    a, k, b = _abs_norm_and_fan_in(graph, node.name, uppers)
    weight = getattr(node.op, "weight", None)
    if isinstance(node.op, AffineOp):
        weight = node.op.scale
    wmax = float(weight.detach().abs().max()) if isinstance(weight, torch.Tensor) else a
    g = gamma32(k + 3)
    under = TINY32 * math.sqrt(_numel(node)) * (2 * k + 4 + k * wmax)
    return [Term(node.inputs[0], d * g * a, d * (g * b + under))]


def _activation_terms(node: Node, d: float) -> list[Term]:
    op = node.op
    assert isinstance(op, Activation)
    root = math.sqrt(_numel(node))
    if op.fn in EXACT_ACTIVATIONS:
        return [Term("", 0.0, d * 2 * TINY32 * root)]
    lib = LIBRARY_ULPS * UNIT32
    const = d * (lib + ABSOLUTE_ERROR.get(op.fn, 0.0) + 4 * TINY32) * root
    return [Term(node.name, d * lib, const), Term(node.inputs[0], d * lib, 0.0)]


def _node_terms(graph: Graph, node: Node, d: float, uppers: Mapping[str, UpperBound]) -> list[Term]:
    op = node.op
    if type(op).linear and node.op_type not in EXACT:
        return _linear_terms(graph, node, d, uppers)
    if isinstance(op, Activation):
        return _activation_terms(node, d)
    root = math.sqrt(_numel(node))
    if isinstance(op, Add):
        return [Term(node.name, d * UNIT32, d * 2 * TINY32 * root)]
    if isinstance(op, MaxPool):
        return [Term("", 0.0, d * 2 * TINY32 * root)]
    if node.op_type in EXACT:
        return []
    raise Float32NotCovered(f"no float32 rounding rule for {node.op_type} (node '{node.name}')")


class Float32ErrorModel:
    """Per-sample allowance for a float32 pass: `allowance(acts)` >= |computed - exact| of every
    margin f_i - f_j (see the module doc).

    >>> # model = Float32ErrorModel(bound.folded, {n.name: n.upper for n in bound.layers})
    >>> # acts = bound.folded.to("cpu", torch.float32).activations(x32); model.allowance(acts)
    """

    def __init__(self, graph: Graph, uppers: Mapping[str, UpperBound], input_rounded: bool = True) -> None:
        d = downstream_lipschitz(graph, uppers)
        self.terms: list[Term] = []
        if input_rounded and d[INPUT] > 0:
            n_in = math.prod(graph.input_shape)
            coef = d[INPUT] * UNIT32 / (1.0 - UNIT32)
            self.terms.append(Term(INPUT, coef, d[INPUT] * TINY32 * math.sqrt(n_in)))
        for node in graph.nodes:
            if d[node.name] > 0:
                self.terms += _node_terms(graph, node, d[node.name], uppers)
        self.const = sum(t.const for t in self.terms)
        coefs: dict[str, float] = {}
        for t in self.terms:
            if t.tensor and t.coef > 0:
                coefs[t.tensor] = coefs.get(t.tensor, 0.0) + t.coef
        self.coefs = coefs  # one norm per tensor, however many terms use it

    def allowance(self, acts: Mapping[str, Tensor]) -> Tensor:
        """sqrt(2) * sum_v D_v e_v per sample (float64, rounded up; inf where a norm overflowed)."""
        x = acts[INPUT]
        total = torch.full((x.shape[0],), self.const, dtype=torch.float64, device=x.device)
        for name, coef in self.coefs.items():
            total = total + coef * norm_upper(acts[name])
        return total * (math.sqrt(2.0) * SUM_SLACK)


def norm_upper(t: Tensor) -> Tensor:
    """Per-sample upper bound on the exact L2 norm of a float32 tensor [B, ...], as float64: the float32
    sum of squares s satisfies sum x^2 <= (s + 2 n T) / (1 - gamma(n + 1)) whatever the order."""
    flat = t.reshape(t.shape[0], -1)
    n = flat.shape[1]
    s = torch.linalg.vecdot(flat, flat).to(torch.float64)
    return torch.sqrt((s + 2 * n * TINY32) / (1.0 - gamma32(n + 1))) * (1.0 + 2.0**-50)
