"""Every registered norm method against ground truth: the dense SVD of the layer's explicit matrix,
built here independently by applying torch.nn.functional to the identity basis in float64.

A proven upper bound below the truth is the worst bug this project can have, so every method in the
registry is run on random small layers (hypothesis) and checked: upper >= truth, lower <= truth.
Estimates are exempt from the upper check. A new method is tested by being registered.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from speccert.ir.ops import AvgPool, BatchNorm, Conv, ConvTranspose, GlobalAvgPool, Linear, Pad
from speccert.norms import METHODS, Estimate, LowerBound, UpperBound, load_methods
from speccert.norms.layer import LinearLayer, linear_part
from speccert.norms.method import NormContext

load_methods()
METHOD_NAMES = sorted(METHODS.keys())
CTX = NormContext(max_iter=200)
REL = 1e-12  # ground truth's own float64 SVD error is ~1e-15 relative


def _pad_arg(pads: tuple[tuple[int, int], ...]) -> list[int]:
    out: list[int] = []
    for b, e in reversed(pads):
        out += [b, e]
    return out


def truth_conv(
    w: torch.Tensor, size: tuple[int, ...], stride, pads, dil, groups: int, circular: bool
) -> float:
    cin = w.shape[1] * groups
    n = cin * math.prod(size)
    basis = torch.eye(n, dtype=torch.float64).reshape(n, cin, *size)
    x = F.pad(basis, _pad_arg(pads), mode="circular" if circular else "constant")
    conv = F.conv1d if len(size) == 1 else F.conv2d
    y = conv(x, w, None, stride, 0, dil, groups)
    return float(torch.linalg.matrix_norm(y.reshape(n, -1).T, 2))


def truth_matrix_of(op, in_shape) -> float:  # noqa: ANN001
    n = math.prod(in_shape)
    y = op.forward(torch.eye(n, dtype=torch.float64).reshape(n, *in_shape))
    return float(torch.linalg.matrix_norm(y.reshape(n, -1).T, 2))


def check_all_methods(layer: LinearLayer, truth: float) -> int:
    checked = 0
    for name in METHOD_NAMES:
        method = METHODS.get(name)
        if not method.applies(layer):
            continue
        for r in method.compute(layer, CTX):
            assert math.isfinite(r.value), (name, r)
            if isinstance(r, UpperBound):
                assert r.value >= truth * (1 - REL), (
                    f"{name} upper {r.value} < truth {truth} on {layer.describe()}"
                )
            elif isinstance(r, LowerBound):
                assert r.value <= truth * (1 + REL) + 1e-300, f"{name} lower {r.value} > truth {truth}"
            else:
                assert isinstance(r, Estimate)
            checked += 1
    return checked


@st.composite
def conv_layers(draw):  # noqa: ANN001, ANN201
    nd = draw(st.sampled_from([1, 2]))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    k = tuple(draw(st.integers(1, 7)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dil = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    size = tuple(draw(st.integers(1, 16 if nd == 1 else 9)) for _ in range(nd))
    circular = draw(st.booleans()) and draw(st.booleans())
    if circular:
        pads = tuple((p, p) for p in (draw(st.integers(0, min(k[i], size[i]))) for i in range(nd)))
    else:
        pads = tuple((draw(st.integers(0, k[i])), draw(st.integers(0, k[i]))) for i in range(nd))
    eff = [size[i] + sum(pads[i]) - dil[i] * (k[i] - 1) for i in range(nd)]
    if min(eff) < 1:
        pads = tuple((b + max(0, 1 - eff[i]), e) for i, (b, e) in enumerate(pads))
        if circular:
            circular = False
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    w = torch.randn(cout, cin // groups, *k, generator=gen, dtype=torch.float64)
    return w, size, stride, pads, dil, groups, circular


SETTINGS = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(conv_layers())
def test_conv_every_method_brackets_the_truth(spec) -> None:  # noqa: ANN001
    w, size, stride, pads, dil, groups, circular = spec
    op = Conv(w, None, stride, pads, dil, groups, "circular" if circular else "zeros")
    in_shape = (w.shape[1] * groups, *size)
    out_shape = tuple(op.forward(torch.zeros(1, *in_shape, dtype=torch.float64)).shape[1:])
    truth = truth_conv(w, size, stride, pads, dil, groups, circular)
    assert check_all_methods(LinearLayer("c", op, in_shape, out_shape), truth) >= 4


@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 4),
    st.integers(1, 3),
    st.integers(0, 2),
    st.integers(0, 1),
    st.integers(2, 7),
)
def test_conv_transpose_brackets_the_truth(cin, cout, k, s, p, op_pad, n) -> None:  # noqa: ANN001
    p = min(p, k - 1)
    op_pad = min(op_pad, s - 1)
    w = torch.randn(cin, cout, k, k, dtype=torch.float64)
    op = ConvTranspose(w, None, (s, s), (p, p), (op_pad, op_pad), (1, 1))
    in_shape = (cin, n, n)
    truth = truth_matrix_of(op, in_shape)
    out_shape = tuple(op.forward(torch.zeros(1, *in_shape, dtype=torch.float64)).shape[1:])
    assert check_all_methods(LinearLayer("t", op, in_shape, out_shape), truth) >= 3


@settings(max_examples=12, deadline=None, derandomize=True)
@given(st.integers(1, 40), st.integers(1, 40))
def test_dense_shapes(m, n) -> None:  # noqa: ANN001
    w = torch.randn(m, n, dtype=torch.float64)
    truth = float(torch.linalg.matrix_norm(w, 2))
    layer = LinearLayer("fc", Linear(w), (n,), (m,))
    assert check_all_methods(layer, truth) >= 3


@pytest.mark.parametrize(
    "kernel,stride,pad,ceil,count",
    [
        ((2, 2), (2, 2), ((0, 0), (0, 0)), False, True),
        ((3, 3), (1, 1), ((1, 1), (1, 1)), False, True),
        ((3, 3), (2, 2), ((1, 1), (1, 1)), True, False),
        ((3, 2), (2, 1), ((1, 1), (0, 1)), False, True),
    ],
)
def test_avgpool_brackets_the_truth(kernel, stride, pad, ceil, count) -> None:  # noqa: ANN001
    op = AvgPool(kernel, stride, pad, ceil, count)
    in_shape = (2, 7, 6)
    truth = truth_matrix_of(op, in_shape)
    out_shape = tuple(op.forward(torch.zeros(1, *in_shape, dtype=torch.float64)).shape[1:])
    layer = LinearLayer("p", op, in_shape, out_shape)
    assert check_all_methods(layer, truth) >= 2


@pytest.mark.parametrize(
    "op,in_shape",
    [
        (GlobalAvgPool(), (3, 4, 5)),
        (Pad(((0, 0), (1, 2), (0, 3))), (2, 3, 3)),
        (
            BatchNorm(
                torch.rand(4, dtype=torch.float64),
                torch.rand(4, dtype=torch.float64) + 0.1,
                torch.randn(4, dtype=torch.float64),
                torch.randn(4, dtype=torch.float64),
            ),
            (4, 3, 3),
        ),
    ],
)
def test_closed_forms_are_exact(op, in_shape) -> None:  # noqa: ANN001
    lin = linear_part(op)
    truth = truth_matrix_of(lin, in_shape)
    out_shape = tuple(lin.forward(torch.zeros(1, *in_shape, dtype=torch.float64)).shape[1:])
    layer = LinearLayer("x", lin, in_shape, out_shape)
    res = METHODS.get("closed_form").compute(layer, CTX)
    up = next(r for r in res if isinstance(r, UpperBound))
    lo = next(r for r in res if isinstance(r, LowerBound))
    assert lo.value <= truth * (1 + REL) and up.value >= truth * (1 - REL)
    assert up.value == pytest.approx(truth, rel=1e-12)
