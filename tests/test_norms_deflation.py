"""The deflated torus bound (speccert.norms.deflation) against dense SVD of the explicit operator.

Any threshold tau gives a proven bound (the eigenvectors only steer it): every threshold, from the
plain torus bound (no vector deflated) to every eigenvector deflated, must stay >= the truth and
<= the torus bound on the same torus (to the 1e-6 that single-precision eigenvectors may cost); on a 7x7 map it must also be clearly tighter than the torus.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given
from test_norms_soundness import SETTINGS, conv_layers, truth_conv

from speccert.norms import deflation, torus
from speccert.norms.layer import ConvGeometry

CPU = torch.device("cpu")


def _geometry(w: torch.Tensor, size, stride, pads, dil, groups: int) -> ConvGeometry:  # noqa: ANN001
    return ConvGeometry(w, tuple(size), tuple(stride), tuple(pads), tuple(dil), groups)


def _seven_by_seven(c: int) -> tuple[ConvGeometry, float]:
    """A Kaiming-scaled c -> c 3x3 conv on a 7x7 map with padding 1 (ResNet-18's layer4 in small), and
    its norm from dense SVD."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(c, c, 3, 3, generator=gen, dtype=torch.float64) * math.sqrt(2 / (c * 9))
    size, pads = (7, 7), ((1, 1), (1, 1))
    return _geometry(w, size, (1, 1), pads, (1, 1), 1), truth_conv(w, size, (1, 1), pads, (1, 1), 1, False)


# a 1x3 kernel on a 1x1 map (padding 4 above, dilation 1x2): the crop's P was singular (a solver error)
RANK_ONE = (
    torch.tensor([[[[1.5410, -0.2934, -2.1788]]]], dtype=torch.float64),
    (1, 1),
    (1, 1),
    ((0, 0), (4, 0)),
    (1, 2),
    1,
    False,
)


@SETTINGS
@given(conv_layers())
@example(RANK_ONE)
def test_deflated_between_truth_and_torus_for_every_threshold(spec) -> None:  # noqa: ANN001
    w, size, stride, pads, dil, groups, circular = spec
    g = _geometry(w, size, stride, pads, dil, groups)
    if circular or not deflation.applies(g):
        return
    truth = truth_conv(w, size, stride, pads, dil, groups, False)
    plain = torus.torus_bound(g.as_2d(), torus.candidate_plans(g.as_2d(), 0)[0], CPU).value
    for theta in (1.0, deflation.THETA_LIGHT, 0.9, 0.5, 0.0):
        db = deflation.deflated_bound(g, CPU, theta, max_rank=100_000)
        assert db.value >= truth * (1 - 1e-12), (theta, db.value, truth)
        assert db.value <= plain * (1 + 1e-6), (theta, db.value, plain)  # (single-precision steer)
    # as the `deflated` method runs it (auto's light tier: few vectors), min over fft's tori: never above
    # the bound it supersedes, even where a larger torus is what makes fft tight
    light = deflation.deflated_bound(g, CPU, deflation.THETA_LIGHT, extra=2).value
    assert truth * (1 - 1e-12) <= light <= torus.fft_bound(g, CPU).value * (1 + 1e-6), (light, truth)


def test_deflated_tighter_than_torus_on_small_maps() -> None:
    g, truth = _seven_by_seven(16)
    plain = torus.fft_bound(g, CPU).value
    db = deflation.deflated_bound(g, CPU, 0.0, max_rank=100_000)
    assert truth <= db.value
    # all vectors deflated: lambda_max(E^T K E), the conv without its output cropping
    assert db.value / truth - 1 < 0.6 * (plain / truth - 1), (truth, db.value, plain)


def test_strided_output_side_matches_dense() -> None:
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(12, 3, 3, 3, generator=gen, dtype=torch.float64)
    size, pads, stride = (9, 8), ((1, 1), (1, 0)), (2, 2)
    g = _geometry(w, size, stride, pads, (1, 1), 1)
    truth = truth_conv(w, size, stride, pads, (1, 1), 1, False)
    for theta in (0.9, 0.0):
        db = deflation.deflated_bound(g, CPU, theta, max_rank=100_000)
        assert truth * (1 - 1e-12) <= db.value < torus.fft_bound(g, CPU).value * (1 + 1e-6)


def test_output_crop_reaches_the_truth_and_never_loosens() -> None:
    """With the crop kept (speccert.norms.crop), every vector deflated gives ||A|| itself (to the 1e-6
    relative slack of the certificate's s), any threshold stays >= the truth and <= the window-only bound,
    on stride-1 convs with dilation, asymmetric padding, groups and 1-d."""
    gen = torch.Generator().manual_seed(2)
    cases = [
        ((8, 8, 3, 3), (7, 7), ((1, 1), (1, 1)), (1, 1), 1),
        ((6, 3, 3, 3), (6, 5), ((1, 2), (0, 1)), (1, 1), 2),
        ((8, 8, 3, 3), (7, 7), ((2, 2), (2, 2)), (2, 2), 1),
        ((12, 12, 2, 2), (4, 4), ((0, 1), (0, 1)), (1, 1), 1),
        ((5, 4, 3), (9,), ((1, 1),), (1,), 1),
    ]
    for shape, size, pads, dil, groups in cases:
        w = torch.randn(*shape, generator=gen, dtype=torch.float64)
        stride = (1,) * len(size)
        g = _geometry(w, size, stride, pads, dil, groups)
        truth = truth_conv(w, size, stride, pads, dil, groups, False)
        for theta in (0.9, 0.5, 0.0):
            kept = deflation.deflated_bound(g, CPU, theta, max_rank=100_000).value
            window = deflation.deflated_bound(g, CPU, theta, max_rank=100_000, crop=False).value
            assert truth <= kept <= window * (1 + 1e-9), (shape, theta, truth, kept, window)
        assert kept <= truth * (1 + 2e-6), (shape, kept, truth)


def test_output_crop_cuts_the_window_bounds_excess_on_7x7() -> None:
    """ResNet-18's layer4 situation in small (32 channels, 3x3 on 7x7): at the default threshold the crop
    removes more than 40% of the window-only bound's excess over the truth (measured: 1.91% -> 1.03%)."""
    g, truth = _seven_by_seven(32)
    kept = deflation.deflated_bound(g, CPU).value
    window = deflation.deflated_bound(g, CPU, crop=False).value
    assert truth <= kept and kept / truth - 1 < 0.6 * (window / truth - 1), (truth, kept, window)


def test_hermitian_gram_is_the_gram_matrix_exactly_hermitian() -> None:
    """crop.hermitian_gram computes x^H x on the lower block triangle only: the result must be exactly
    Hermitian and equal to the full product to rounding (the same inner products), for any block split."""
    from speccert.norms.crop import hermitian_gram

    gen = torch.Generator().manual_seed(4)
    for rows, cols, blocks in ((50, 17, 8), (9, 3, 8), (40, 40, 3), (7, 1, 1)):
        x = torch.complex(
            torch.randn(rows, cols, generator=gen, dtype=torch.float64),
            torch.randn(rows, cols, generator=gen, dtype=torch.float64),
        )
        h = hermitian_gram(x, blocks)
        assert torch.equal(h, h.mH)
        assert torch.allclose(h, x.mH @ x, rtol=0, atol=1e-12 * rows)


@pytest.mark.parametrize("per_block", [True, False])
def test_top_pairs_are_the_full_eigh_above_tau(monkeypatch, per_block: bool) -> None:  # noqa: ANN001
    """deflation._top_pairs computes only the eigenpairs above a first guess of tau (LAPACK MRRR, at one
    thread) or all of them (torch's batched eigh): tau, the eigenvalues kept and their eigenvectors must
    match a full eigh's, for every threshold and with the max_rank cap, including blocks the
    power-iteration guess did not pick."""
    monkeypatch.setattr(deflation, "per_block_lapack", lambda h: per_block)
    gen = torch.Generator().manual_seed(5)
    a = torch.complex(
        torch.randn(6, 24, 24, generator=gen, dtype=torch.float64),
        torch.randn(6, 24, 24, generator=gen, dtype=torch.float64),
    )
    h = a @ a.mH
    h[3] *= 1.3  # the largest block
    lam_all = torch.linalg.eigvalsh(h.to(torch.complex64)).to(torch.float64)
    for theta, max_rank in ((0.85, 1024), (0.5, 1024), (0.0, 100_000), (1.0, 1024), (0.3, 20)):
        lam, vec, tau, cleared, cleared_at = deflation._top_pairs(h, theta, max_rank)
        # the blocks the Cholesky screen cleared keep no vector and are below cleared_at <= tau (proven)
        assert cleared_at <= tau * (1 + 1e-12)
        for i in torch.nonzero(cleared)[:, 0].tolist():
            assert float(lam_all[i].max()) <= cleared_at * (1 + 1e-6) and not bool((lam[i] > tau).any())
        top = torch.sort(lam_all.flatten(), descending=True).values
        want = theta * float(top[0])
        if top.numel() > max_rank // 2:
            want = max(want, float(top[max_rank // 2]))
        assert math.isclose(tau, want, rel_tol=1e-5, abs_tol=1e-9), (theta, tau, want)
        for i in range(h.shape[0]):
            kept = lam[i][lam[i] > tau]
            ref = lam_all[i][lam_all[i] > tau * (1 + 1e-5)]
            assert kept.numel() >= ref.numel() and kept.numel() <= int((lam_all[i] > tau * (1 - 1e-5)).sum())
            v = vec[i][:, lam[i] > tau]
            # each kept vector is an eigenvector of h[i] (residual at single precision)
            res = h[i] @ v - v * kept[None, :]
            assert res.numel() == 0 or float(res.abs().max()) <= 1e-4 * float(lam_all.max()), (theta, i)


def test_both_gram_assemblies_give_the_same_sound_torus_bound(monkeypatch) -> None:  # noqa: ANN001
    """torus._chunk_gram sums every ordered tap pair in one complex product on small blocks and the pairs
    a <= b plus their conjugate transpose on large ones (ALL_PAIRS_BYTES): both must give the same proven
    bound (to rounding), above the truth, on one-slot convs of either Gram side (c_out >= c_in and <)."""
    gen = torch.Generator().manual_seed(6)
    cases = [
        ((8, 5, 3, 3), (6, 7), ((1, 1), (1, 1)), (1, 1)),
        ((4, 9, 3, 2), (5, 6), ((2, 0), (1, 1)), (2, 1)),
    ]
    for shape, size, pads, dil in cases:
        w = torch.randn(*shape, generator=gen, dtype=torch.float64)
        g = _geometry(w, size, (1, 1), pads, dil, 1)
        truth = truth_conv(w, size, (1, 1), pads, dil, 1, False)
        plans = torus.candidate_plans(g.as_2d(), 0)[0]
        fast = torus.torus_bound(g.as_2d(), plans, CPU).value
        monkeypatch.setattr(torus, "ALL_PAIRS_BYTES", 0)
        slow = torus.torus_bound(g.as_2d(), plans, CPU).value
        monkeypatch.undo()
        assert truth <= fast and math.isclose(fast, slow, rel_tol=1e-12), (shape, truth, fast, slow)


def test_single_precision_estimate_of_s_keeps_the_bound(monkeypatch) -> None:  # noqa: ANN001
    """crop's estimate of s in single precision (used above ESTIMATE_32 rows, i.e. on ResNet-18's layer4)
    only steers the certificate: forced on small 7x7 convs it must still give a bound >= the truth (dense
    SVD) and within 1e-4 of the double-precision estimate's bound."""
    from speccert.norms import crop

    for c in (8, 16):
        g, truth = _seven_by_seven(c)
        double = deflation.deflated_bound(g, CPU).value
        monkeypatch.setattr(crop, "ESTIMATE_32", 0)
        single = deflation.deflated_bound(g, CPU).value
        monkeypatch.undo()
        assert truth <= single and abs(single / double - 1) < 1e-4, (c, truth, single, double)
