"""The Cholesky-certified maximum of block norms (speccert.norms.psd) against float64 SVD."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speccert.norms.psd import max_block_norm


def _truth(b: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(b, ord=2).max())


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.integers(1, 40), st.integers(1, 40), st.booleans(), st.integers(0, 10**6))
def test_upper_and_tight(batch: int, rows: int, cols: int, complex_: bool, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    b = torch.randn(batch, rows, cols, generator=gen, dtype=torch.float64)
    if complex_:
        b = torch.complex(b, torch.randn(batch, rows, cols, generator=gen, dtype=torch.float64))
    got, top = max_block_norm(b)
    truth = _truth(b)
    assert truth <= got <= truth * (1 + 1e-8)
    assert 0 <= top < batch


def test_maximum_hidden_among_near_ties() -> None:
    """Many blocks with almost the same norm and the largest one not first: the max is still found."""
    gen = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(64, 64, 64, generator=gen, dtype=torch.float64))
    s = torch.linspace(1.0, 0.5, 64, dtype=torch.float64)
    scale = 1.0 + 1e-7 * torch.rand(64, generator=gen, dtype=torch.float64)
    b = q * (s[None, :] * scale[:, None])[:, None, :] @ q.mT  # block i has norm scale[i]
    got, top = max_block_norm(b)
    truth = _truth(b)
    assert truth <= got <= truth * (1 + 1e-9)
    assert top == int(torch.argmax(scale))


def test_floor_is_respected_and_zero_blocks() -> None:
    b = torch.zeros(3, 5, 4, dtype=torch.float64)
    got, _ = max_block_norm(b)
    assert 0.0 <= got < 1e-149
    got, _ = max_block_norm(b, floor=2.0)
    assert 2.0 <= got <= 2.0 * (1 + 1e-9)


def test_rank_one_with_huge_dynamic_range() -> None:
    u = torch.tensor([1e8, 1.0, 1e-8], dtype=torch.float64)
    b = (u[:, None] * u[None, :])[None]
    got, _ = max_block_norm(b)
    assert (
        float(torch.linalg.norm(u)) ** 2 <= got == pytest.approx(float(torch.linalg.norm(u)) ** 2, rel=1e-9)
    )


@pytest.mark.parametrize(
    "cin,cout,k,n,stride,groups,dil",
    [
        (3, 5, 3, 7, 1, 1, 1),
        (4, 4, 3, 8, 2, 2, 1),
        (2, 6, 5, 9, 3, 1, 1),
        (6, 3, 3, 6, 1, 3, 2),
        (8, 2, 2, 5, 2, 1, 1),
    ],
)
def test_torus_routes_agree_and_bound_the_conv(cin, cout, k, n, stride, groups, dil) -> None:  # noqa: ANN001
    """The tap-product route, the explicit-block route and batched Gram iteration give the same torus
    bound (to their tolerances), above the dense SVD of the zero-padded strided conv."""
    from speccert.ir import Conv
    from speccert.norms.gram_chain import max_gram_bound
    from speccert.norms.layer import LinearLayer
    from speccert.norms.torus import candidate_plans, torus_bound

    gen = torch.Generator().manual_seed(cin * 100 + k)
    w = torch.randn(cout, cin // groups, k, k, generator=gen, dtype=torch.float64)
    p = (k - 1) // 2
    op = Conv(w, None, (stride, stride), ((p, k - 1 - p), (p, p)), (dil, dil), groups)
    x = torch.eye(cin * n * n, dtype=torch.float64).reshape(-1, cin, n, n)
    y = op.forward(x)
    truth = float(torch.linalg.matrix_norm(y.reshape(x.shape[0], -1).T, 2))
    layer = LinearLayer("c", op, (cin, n, n), tuple(y.shape[1:]))
    geo = layer.conv()
    assert geo is not None
    plans = candidate_plans(geo.as_2d(), 0)[0]
    tap = torus_bound(geo.as_2d(), plans, torch.device("cpu")).value
    blocks = torus_bound(geo.as_2d(), plans, torch.device("cpu"), chunk_bytes=1).value  # forces explicit B
    gram = torus_bound(geo.as_2d(), plans, torch.device("cpu"), block_bound=max_gram_bound).value
    assert truth <= tap and truth <= blocks and truth <= gram
    assert blocks == pytest.approx(tap, rel=1e-9)
    assert tap <= gram * (1 + 1e-9)  # Gram iteration is an upper bound on the same block norms


@pytest.mark.parametrize("cin,cout,n,stride", [(3, 8, 10, 1), (8, 3, 9, 2), (4, 4, 7, 1)])
def test_exact_method_brackets_the_truth_to_1e8(cin: int, cout: int, n: int, stride: int) -> None:
    """`exact` returns both sides: the Cholesky-certified upper bound and the certified top singular
    vector from the same Gram matrix (input side or output side, whichever is smaller)."""
    from speccert.ir.ops import Conv
    from speccert.norms.explicit import explicit_matrix
    from speccert.norms.layer import LinearLayer
    from speccert.norms.method import NormContext
    from speccert.norms.methods.exact import ExactMethod
    from speccert.norms.result import LowerBound, UpperBound

    gen = torch.Generator().manual_seed(cin * 100 + n)
    w = torch.randn(cout, cin, 3, 3, generator=gen, dtype=torch.float64)
    out = (n + 2 - 3) // stride + 1
    layer = LinearLayer(
        "c", Conv(w, None, (stride, stride), ((1, 1), (1, 1)), (1, 1)), (cin, n, n), (cout, out, out)
    )
    truth = float(torch.linalg.matrix_norm(explicit_matrix(layer, torch.device("cpu")), ord=2))
    res = ExactMethod().compute(layer, NormContext())
    up = next(r.value for r in res if isinstance(r, UpperBound))
    lo = next(r.value for r in res if isinstance(r, LowerBound))
    assert truth * (1 - 1e-8) <= lo <= truth <= up <= truth * (1 + 1e-8)


@pytest.mark.parametrize("cin,cout,n,stride,groups", [(64, 64, 6, 1, 1), (40, 96, 16, 2, 2)])
def test_exact_large_conv_route_brackets_the_truth(
    cin: int, cout: int, n: int, stride: int, groups: int
) -> None:
    """Above 2048 and with the opt-in `exact_max_dim`, convs are certified from the tap-assembled Gram
    matrix by one in-place Cholesky at (Lanczos lower bound * (1 + 1e-4))^2; without it, `exact` refuses."""
    from speccert.ir.ops import Conv
    from speccert.norms.conv_gram import conv_gram, gram_side
    from speccert.norms.explicit import explicit_matrix
    from speccert.norms.layer import LinearLayer
    from speccert.norms.method import NormContext
    from speccert.norms.methods.exact import ExactMethod
    from speccert.norms.result import LowerBound, UpperBound

    gen = torch.Generator().manual_seed(n)
    w = torch.randn(cout, cin // groups, 3, 3, generator=gen, dtype=torch.float64)
    out = (n + 2 - 3) // stride + 1
    layer = LinearLayer(
        "c", Conv(w, None, (stride, stride), ((1, 1), (1, 1)), (1, 1), groups), (cin, n, n), (cout, out, out)
    )
    d, _ = gram_side(layer.conv())  # type: ignore[arg-type]
    assert d > 2048 or layer.n_in * layer.n_out > 1 << 25
    method = ExactMethod()
    assert method.refuse(layer, NormContext()) is not None
    ctx = NormContext(exact_max_dim=8192)
    assert method.refuse(layer, ctx) is None
    res = method.compute(layer, ctx)
    if layer.n_in * layer.n_out <= 1 << 23:
        truth = float(torch.linalg.matrix_norm(explicit_matrix(layer, torch.device("cpu")), ord=2))
    else:  # the Gram assembly is checked against explicit matrices in the test below
        truth = (
            max(
                float(torch.linalg.eigvalsh(conv_gram(layer.conv(), gi, torch.device("cpu"))[0])[-1])
                for gi in range(groups)
            )
            ** 0.5
        )
    up = next(r.value for r in res if isinstance(r, UpperBound))
    lo = next(r.value for r in res if isinstance(r, LowerBound))
    assert lo <= truth <= up <= truth * (1 + 3e-4)


@pytest.mark.parametrize(
    "cin,cout,k,n,s,p,d,g",
    [
        (3, 5, 3, 7, 1, 1, 1, 1),
        (4, 6, 3, 8, 2, 1, 1, 2),
        (2, 3, 5, 9, 3, 2, 1, 1),
        (6, 3, 3, 9, 1, 2, 2, 3),
        (8, 2, 2, 5, 2, 0, 1, 1),
        (2, 8, 3, 6, 2, 1, 1, 1),
    ],
)
def test_conv_gram_matches_the_explicit_matrix(
    cin: int, cout: int, k: int, n: int, s: int, p: int, d: int, g: int
) -> None:
    """The tap-assembled Gram matrix (either side, stride, dilation, padding, groups) has the explicit
    matrix's spectrum, and its rounding-error bound covers the difference."""
    from speccert.ir.ops import Conv
    from speccert.norms.conv_gram import conv_gram, gram_side
    from speccert.norms.explicit import explicit_matrix
    from speccert.norms.layer import LinearLayer

    gen = torch.Generator().manual_seed(cin + 10 * n)
    w = torch.randn(cout, cin // g, k, k, generator=gen, dtype=torch.float64)
    op = Conv(w, None, (s, s), ((p, p), (p, p)), (d, d), g)
    out = op.forward(torch.zeros(1, cin, n, n, dtype=torch.float64)).shape[1:]
    layer = LinearLayer("c", op, (cin, n, n), tuple(out))
    a = explicit_matrix(layer, torch.device("cpu"))
    geo = layer.conv()
    assert geo is not None
    dim, left = gram_side(geo)
    spectra = []
    for gi in range(g):
        h, err = conv_gram(geo, gi, torch.device("cpu"))
        assert h.shape == (dim, dim) and torch.equal(h, h.T)
        spectra.append(torch.linalg.eigvalsh(h))
    full = torch.linalg.eigvalsh(a.T @ a if left else a @ a.T)
    got = torch.sort(torch.cat(spectra)).values
    top = full[-got.numel() :]  # per-group Gram matrices together have the full Gram's non-zero spectrum
    assert torch.allclose(got[-5:], top[-5:], rtol=1e-10, atol=1e-9 * float(full[-1]))
    assert err >= 0


def test_lapack_passes_agree_with_torch_cholesky() -> None:
    """psd._passes_lapack (CPU, block by block) must accept exactly the blocks torch's batched Cholesky
    accepts: t just above and just below each block's largest eigenvalue, real and complex, a NaN block
    (refused) and a conjugated view."""
    from speccert.norms import psd

    gen = torch.Generator().manual_seed(7)
    for dtype in (torch.float64, torch.complex128):
        a = torch.randn(12, 9, 9, generator=gen, dtype=torch.float64)
        if dtype == torch.complex128:
            a = torch.complex(a, torch.randn(12, 9, 9, generator=gen, dtype=torch.float64))
        h = a @ a.mH
        lam = torch.linalg.eigvalsh(h).amax(-1)
        h[5, 2, 1] = float("nan")
        for t in (
            float(lam.median()) * (1 - 1e-9),
            float(lam.median()) * (1 + 1e-9),
            float(lam.max()) * 1.01,
        ):
            for m in (h, h.conj()):
                fast = psd._passes_lapack(m, t)
                s = -m
                s.diagonal(dim1=-2, dim2=-1).add_(t)
                r, info = torch.linalg.cholesky_ex(s)
                ref = (info == 0) & torch.isfinite(
                    torch.view_as_real(r.sum((-2, -1))) if r.is_complex() else r.sum((-2, -1))
                ).reshape(12, -1).all(-1)
                assert torch.equal(fast, ref), (dtype, t)
                assert not bool(fast[5])
