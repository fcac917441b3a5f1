"""Each penalty's value and gradient against an independent computation (dense matrices, SVD, autograd)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from speccert.errors import UsageError
from speccert.ir import Conv, Graph, Linear, Node
from speccert.training.penalties import make_penalty
from speccert.training.penalties.fantastic4 import fantastic4_bound_exact
from speccert.training.segments import dense_matrix, find_segments
from speccert.training.toy import toy_cnn, toy_mlp, toy_resnet

D = torch.float64


def _exact_sigmas(graph: Graph) -> dict[str, torch.Tensor]:
    """Exact sigma of every weighted segment, differentiable: SVD of its dense matrix built with grad."""
    out = {}
    for seg in find_segments(graph):
        if seg.layer is None:
            continue
        n = math.prod(seg.in_shape)
        eye = torch.eye(n, dtype=D).reshape(n, *seg.in_shape)
        m = seg.apply(eye).reshape(n, -1).T
        out[seg.name] = torch.linalg.matrix_norm(m, 2)
    return out


def _top_pair(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    u, _, vh = torch.linalg.svd(m.detach())
    return u[:, 0], vh[0]


def _pin(it, m: torch.Tensor, out_shape, in_shape) -> None:  # noqa: ANN001
    """Set a power iteration's (u, v) to the exact top singular pair of m (its fixed point)."""
    u, v = _top_pair(m)
    it.u.copy_(u.reshape(out_shape))
    it.v.copy_(v.reshape(in_shape))


def _converge(pen) -> None:  # noqa: ANN001
    """Put every persistent iteration of `pen` at its fixed point (exact SVD), then stop iterating."""
    from speccert.training.power import MatrixPowerIteration

    for seg in pen.sigmas.weighted():
        it = pen.sigmas.iters[seg.name.replace(".", "__")]
        if isinstance(it, MatrixPowerIteration):
            m = seg.effective_weight().reshape(seg.effective_weight().shape[0], -1)
            _pin(it, m, it.u.shape, it.v.shape)
        else:
            _pin(it, dense_matrix(seg), seg.out_shape, seg.in_shape)
    pen.eval()


def _grads(graph: Graph, value: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in graph.to_torch().parameters() if p.requires_grad]
    gs = torch.autograd.grad(value, params, allow_unused=True, retain_graph=True)
    return [g if g is not None else torch.zeros_like(p) for g, p in zip(gs, params, strict=True)]


def _zero(logits_shape: tuple[int, int] = (2, 3)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.zeros(logits_shape, dtype=D), torch.zeros(logits_shape[0], dtype=torch.int64), torch.zeros(1)


def test_spectral_gradient_is_lambda_sigma_u_vT_for_a_matrix() -> None:
    g = toy_mlp()
    model = g.to_torch()
    pen = make_penalty("spectral", g, weight=0.3)
    logits, y, x = _zero()
    value = pen(logits, y, x, model)
    value.backward()
    it = pen.sigmas.iters["l1"]
    w = g.node("l1").op.weight
    sigma = float(it.u @ w.detach() @ it.v)
    expected = 0.3 * sigma * torch.outer(it.u, it.v)
    torch.testing.assert_close(w.grad, expected, rtol=1e-12, atol=1e-14)
    # the value is (lambda/2) sum sigma^2 with the same sigmas
    s2 = float(pen.sigmas.iters["l2"].u @ g.node("l2").op.weight.detach() @ pen.sigmas.iters["l2"].v)
    assert float(value.detach()) == pytest.approx(0.15 * (sigma**2 + s2**2), rel=1e-12)
    assert not torch.allclose(w.grad, 0.3 * sigma**2 * torch.outer(it.u, it.v))  # not the sigma^3 bug


@pytest.mark.parametrize("make", [toy_cnn, toy_resnet], ids=["cnn_bn", "resnet"])
def test_spectral_converges_to_operator_norm_and_its_gradient(make) -> None:  # noqa: ANN001
    g = make()
    pen = make_penalty("spectral", g, weight=2.0, conv_mode="operator")
    _converge(pen)
    pen.eval()  # no further steps: value at the converged vectors
    logits, y, x = _zero()
    value = pen(logits, y, x, g.to_torch())
    exact = _exact_sigmas(g)
    ref = sum(s**2 for s in exact.values())  # (lambda/2) * 2 * ... with lambda = 2
    assert float(value.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    for got, want in zip(_grads(g, value), _grads(g, ref), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_power_iteration_converges_from_below_to_the_svd() -> None:
    g = toy_cnn()
    pen = make_penalty("spectral", g, conv_mode="operator")
    seg = next(s for s in pen.sigmas.weighted() if s.name == "bn1")
    true = float(torch.linalg.matrix_norm(dense_matrix(seg), 2))
    est = [float(pen.sigmas.sigma(seg, 15).detach()) for _ in range(10)]
    assert all(e <= true * (1 + 1e-12) for e in est)  # an estimate from below, never above
    assert est[-1] == pytest.approx(true, rel=5e-3)  # sigma_2 / sigma_1 = 0.995 here: slow but converging
    assert est[-1] > est[0]


def test_spectral_kernel_mode_is_the_reshaped_kernel_norm() -> None:
    g = toy_cnn(bn=False)
    pen = make_penalty("spectral", g, weight=1.0, conv_mode="kernel")
    _converge(pen)
    sig = {s.name: float(pen.sigmas.sigma(s, 0)) for s in pen.sigmas.weighted()}
    w = g.node("c2").op.weight.detach()
    assert sig["c2"] == pytest.approx(float(torch.linalg.matrix_norm(w.reshape(4, -1), 2)), rel=1e-8)
    # and it differs from the operator norm (heuristic, not the operator's norm)
    assert sig["c2"] != pytest.approx(float(_exact_sigmas(g)["c2"]), rel=1e-3)


@pytest.mark.parametrize(
    "stride,pad,mode", [(1, 1, "zeros"), (2, 1, "zeros"), (1, 0, "zeros"), (1, 1, "circular")]
)
def test_fantastic4_bound_is_above_the_dense_operator_norm(stride: int, pad: int, mode: str) -> None:
    gen = torch.Generator().manual_seed(stride * 10 + pad)
    for trial in range(4):
        w = torch.randn(3, 2, 3, 2 + trial % 2, generator=gen, dtype=D)
        conv = Conv(w, None, (stride, stride), ((pad, pad), (pad, pad)), (1, 1), padding_mode=mode)
        g = Graph((2, 6, 6), [Node("c", conv, ("input",))], dtype=D)
        true = float(torch.linalg.matrix_norm(dense_matrix(find_segments(g)[0]), 2))
        assert fantastic4_bound_exact(w) >= true * (1 - 1e-12)


def test_fantastic4_value_and_gradient_match_svd_of_reshapings() -> None:
    g = toy_cnn()
    pen = make_penalty("fantastic4", g, weight=0.5)
    _converge(pen)
    from speccert.training.penalties.fantastic4 import reshapings as _rs

    for key, its in pen.reshape_iters.items():
        seg = next(s for s in find_segments(g) if s.name == key)
        for it, r in zip(its, _rs(seg.effective_weight()), strict=True):
            _pin(it, r, it.u.shape, it.v.shape)
    logits, y, x = _zero()
    value = pen(logits, y, x, g.to_torch())
    segs = {s.name: s for s in find_segments(g)}
    ref = torch.zeros((), dtype=D)
    from speccert.training.penalties.fantastic4 import reshapings

    for name in ("bn1", "c2"):
        k = segs[name].effective_weight()
        ref = ref + 3.0 * torch.stack([torch.linalg.matrix_norm(r, 2) for r in reshapings(k)]).min()
        assert float(pen.bounds(0)[name].detach()) == pytest.approx(fantastic4_bound_exact(k), rel=1e-6)
    exact = _exact_sigmas(g)
    ref = 0.5 * (ref + exact["l1"] + exact["l2"])
    assert float(value.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    for got, want in zip(_grads(g, value), _grads(g, ref), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_weissi_chain_is_sum_of_log_sigmas() -> None:
    g = toy_cnn()
    pen = make_penalty("weissi", g, weight=0.7)
    _converge(pen)
    pen.eval()
    logits, y, x = _zero()
    value = pen(logits, y, x, g.to_torch())
    ref = 0.7 * sum(torch.log(s) for s in _exact_sigmas(g).values())
    assert float(value.detach()) == pytest.approx(float(ref.detach()), rel=1e-7)
    for got, want in zip(_grads(g, value), _grads(g, ref), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_weissi_residual_block_is_log_one_plus_product() -> None:
    g = toy_resnet()
    pen = make_penalty("weissi", g, weight=1.0)
    _converge(pen)
    pen.eval()
    logits, y, x = _zero()
    value = pen(logits, y, x, g.to_torch())
    s = _exact_sigmas(g)
    ref = torch.log(s["stem"]) + torch.log(1 + s["b1"] * s["b2"]) + torch.log(s["fc"])
    assert float(value.detach()) == pytest.approx(float(ref.detach()), rel=1e-7)


def test_weissi_is_invariant_to_scale_shift_between_layers() -> None:
    g1, g2 = toy_mlp(), toy_mlp()
    with torch.no_grad():
        for n, c in (("l1", 3.0), ("l2", 1 / 3.0)):
            g2.node(n).op.weight.mul_(c)
        g2.node("l1").op.bias.mul_(3.0)
    vals = []
    for g in (g1, g2):
        pen = make_penalty("weissi", g, weight=1.0)
        _converge(pen)
        pen.eval()
        vals.append(float(pen(*_zero(), g.to_torch()).detach()))
    assert vals[0] == pytest.approx(vals[1], rel=1e-9)


def test_spectreg_equals_projected_jacobian_and_is_unbiased() -> None:
    g = toy_mlp(act="tanh")
    model = g.to_torch()
    x = torch.rand(4, 6, dtype=D)
    y = torch.tensor([0, 1, 2, 0])
    pen = make_penalty("spectreg", g, weight=1.0)
    torch.manual_seed(5)
    value = pen(model(x), y, x, model)
    torch.manual_seed(5)
    r = torch.randn(4, 3, dtype=D)
    jac = [
        torch.autograd.functional.jacobian(lambda v: model(v.unsqueeze(0))[0], x[i]) for i in range(4)
    ]  # [3, 6]
    ref = sum(float((j.T @ r[i]).pow(2).sum()) for i, j in enumerate(jac)) / 4
    assert float(value.detach()) == pytest.approx(ref, rel=1e-10)
    frob = sum(float(j.pow(2).sum()) for j in jac) / 4
    samples = [float(pen(model(x), y, x, model).detach()) for _ in range(1000)]
    mean, sd = sum(samples) / len(samples), torch.tensor(samples).std().item()
    assert abs(mean - frob) < 5 * sd / math.sqrt(len(samples))


def test_spectreg_datagrad_is_per_example_input_gradient_norm() -> None:
    g = toy_mlp(act="tanh")
    model = g.to_torch()
    x = torch.rand(3, 6, dtype=D)
    y = torch.tensor([2, 0, 1])
    pen = make_penalty("spectreg", g, weight=0.5, variant="datagrad")
    value = pen(model(x), y, x, model)
    ref = 0.0
    for i in range(3):
        xi = x[i : i + 1].clone().requires_grad_(True)
        (gi,) = torch.autograd.grad(F.cross_entropy(model(xi), y[i : i + 1]), xi)
        ref += float(gi.pow(2).sum())
    assert float(value) == pytest.approx(0.5 * ref / 3, rel=1e-10)
    value.backward()  # differentiable in the weights (double backprop)
    assert g.node("l1").op.weight.grad.abs().sum() > 0


def test_curvature_two_layer_formula_and_soundness() -> None:
    g = toy_mlp(act="softplus")
    pen = make_penalty("curvature", g, weight=1.0)
    _converge(pen)
    pen.eval()
    value = pen(*_zero(), g.to_torch())
    s = _exact_sigmas(g)
    ref = s["l2"] * 0.25 * s["l1"] ** 2
    assert float(value.detach()) == pytest.approx(float(ref.detach()), rel=1e-7)
    for got, want in zip(_grads(g, value), _grads(g, ref), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    # soundness of K (with exact sigmas): Hessian norm of every output coordinate at random points
    model = g.to_torch()
    for _ in range(20):
        x0 = torch.randn(6, dtype=D) * 2
        for k in range(3):
            h = torch.autograd.functional.hessian(lambda v, k=k: model(v.unsqueeze(0))[0, k], x0)
            assert float(torch.linalg.matrix_norm(h, 2)) <= float(ref) * (1 + 1e-9)


def test_curvature_refuses_relu_networks() -> None:
    with pytest.raises(UsageError, match="smooth"):
        make_penalty("curvature", toy_mlp(act="relu"))


@pytest.mark.parametrize("form", ["global", "pairwise"])
def test_lmt_loss_is_cross_entropy_of_shifted_logits(form: str) -> None:
    g = toy_cnn()
    model = g.to_torch()
    pen = make_penalty("lmt", g, weight=0.8, eps=0.5, form=form)
    _converge(pen)
    pen.eval()
    x = torch.rand(5, 1, 8, 8, dtype=D)
    y = torch.tensor([0, 1, 2, 1, 0])
    logits = model(x)
    loss = pen.loss(logits, y, x, model)
    s = _exact_sigmas(g)
    norm_const = 2.0  # the normalisation Affine's scale
    onehot = F.one_hot(y, 3).to(D)
    if form == "global":
        lip = norm_const * s["bn1"] * s["c2"] * s["l1"] * s["l2"]
        shift = math.sqrt(2) * 0.4 * lip * (1 - onehot)
    else:
        w = g.node("l2").op.weight
        lip_pen = norm_const * s["bn1"] * s["c2"] * s["l1"]
        shift = torch.stack([torch.stack([(w[y[i]] - w[j]).norm() for j in range(3)]) for i in range(5)])
        shift = 0.4 * shift * lip_pen
    ref = F.cross_entropy(logits + shift, y)
    assert float(loss) == pytest.approx(float(ref), rel=1e-6)
    for got, want in zip(_grads(g, loss), _grads(g, ref), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    # the contract: CE + forward == loss
    assert float(F.cross_entropy(logits, y) + pen(logits, y, x, model)) == pytest.approx(
        float(loss), rel=1e-12
    )


def test_lmt_pairwise_needs_linear_head() -> None:
    conv = Conv(torch.randn(3, 1, 3, 3, dtype=D), None, (1, 1), ((0, 0), (0, 0)), (1, 1))
    g = Graph(
        (1, 3, 3),
        [
            Node("c", conv, ("input",)),
            Node("r", __import__("speccert.ir", fromlist=["Reshape"]).Reshape((3,)), ("c",)),
        ],
        dtype=D,
    )
    with pytest.raises(UsageError, match="Linear last layer"):
        make_penalty("lmt", g, form="pairwise")
    make_penalty("lmt", g, form="global")
    assert isinstance(Linear, type)
