"""Second-order certificate: the curvature bound is sound, the radius follows the formula, and on a
smooth network trained here it beats the global certificate without ever being broken by an attack."""

from __future__ import annotations

import math

import pytest
import torch
from certify_nets import D, all_nets

from speccert.bounds import certify, lipschitz_bound
from speccert.bounds.audit import pgd_l2
from speccert.bounds.certificate import CertContext
from speccert.bounds.second_order import curvature_matrix
from speccert.ir import INPUT, Activation, Graph, Linear, Node

SMOOTH = {
    k: g
    for k, g in all_nets().items()
    if k in ("mlp_tanh", "mlp_elu", "concat", "smooth_cnn", "residual_silu")
}


def margin_gradients(graph: Graph, x: torch.Tensor, y: int, j: int) -> torch.Tensor:
    z = x.detach().requires_grad_(True)
    out = graph.forward(z)
    (g,) = torch.autograd.grad((out[:, y] - out[:, j]).sum(), z)
    return g.reshape(x.shape[0], -1)


@pytest.mark.parametrize("name", sorted(SMOOTH))
def test_curvature_bound_above_gradient_lipschitz_quotients(name: str) -> None:
    """||grad m(x) - grad m(x')|| <= K ||x - x'|| for every margin m = f_y - f_j, at close and far pairs."""
    g = SMOOTH[name]
    lb = lipschitz_bound(g)
    assert lb.curvature is not None
    k = curvature_matrix(CertContext(lb, lb.folded, torch.device("cpu")))
    gen = torch.Generator().manual_seed(5)
    c = g.output_shape[0]
    worst = 0.0
    for y in range(min(c, 2)):
        for j in range(c):
            if y == j:
                continue
            x = torch.randn(16, *g.input_shape, generator=gen, dtype=D)
            for step in (1e-3, 0.1, 1.0):
                x2 = x + step * torch.randn(x.shape, generator=gen, dtype=D)
                q = (margin_gradients(g, x, y, j) - margin_gradients(g, x2, y, j)).norm(dim=1) / (
                    (x - x2).reshape(16, -1).norm(dim=1)
                )
                worst = max(worst, float((q / k[y, j]).max()))
    assert 0 < worst <= 1.0


def test_radius_matches_the_formula_on_a_one_hidden_layer_net() -> None:
    torch.manual_seed(2)
    w1, b1 = torch.randn(8, 5, dtype=D), torch.randn(8, dtype=D)
    w2, b2 = torch.randn(3, 8, dtype=D) * 0.5, torch.randn(3, dtype=D)
    g = Graph(
        (5,),
        [
            Node("l1", Linear(w1, b1), (INPUT,)),
            Node("a", Activation("tanh"), ("l1",)),
            Node("l2", Linear(w2, b2), ("a",)),
        ],
        dtype=D,
    )
    x = torch.randn(40, 5, dtype=D)
    with torch.no_grad():
        y = g.forward(x).argmax(1)
    rep = certify(g, (x, y), eps=[0.1], second_order=True, lower_bound=False)
    s1 = float(torch.linalg.matrix_norm(w1, ord=2))
    kt = 4 / (3 * math.sqrt(3))  # sup |tanh''|
    for i in range(40):
        yi = int(y[i])
        best = math.inf
        for j in range(3):
            if j == yi:
                continue
            kj = kt * float((w2[yi] - w2[j]).abs().max()) * s1**2
            gj = float(margin_gradients(g, x[i : i + 1], yi, j).norm())
            with torch.no_grad():
                out = g.forward(x[i : i + 1])[0]
            m = float(out[yi] - out[j])
            best = min(best, (-gj + math.sqrt(gj * gj + 2 * kj * m)) / kj)
        r = float(rep.radii["second_order"][i])
        # Equal up to the float64 allowance (margins lowered by 1e-7 x the largest intermediate magnitude).
        assert r <= best and r == pytest.approx(best, rel=1e-3)


def _train_smooth_net() -> tuple[Graph, torch.Tensor, torch.Tensor]:
    """A one-hidden-layer softplus net (width 64) on three Gaussian blobs in 6-D, 100 Adam steps.

    Wide and shallow on purpose: the curvature of a margin scales with ||W_y - W_j||_inf (small for a
    wide layer), while the first-order certificates pay ||W_y - W_j||_2."""
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 6, generator=gen, dtype=torch.float32) * 2.0
    y = torch.randint(0, 3, (600,), generator=gen)
    x = centers[y] + 0.6 * torch.randn(600, 6, generator=gen)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 64), torch.nn.Softplus(), torch.nn.Linear(64, 3))
    opt = torch.optim.Adam(net.parameters(), lr=3e-2)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x[:400]), y[:400]).backward()
        opt.step()
    lin = [m for m in net if isinstance(m, torch.nn.Linear)]
    nodes = [
        Node("l1", Linear(lin[0].weight.detach(), lin[0].bias.detach()), (INPUT,)),
        Node("a1", Activation("softplus"), ("l1",)),
        Node("l2", Linear(lin[1].weight.detach(), lin[1].bias.detach()), ("a1",)),
    ]
    return Graph((6,), nodes), x[400:], y[400:]


def test_second_order_beats_global_on_a_trained_smooth_net_and_survives_attacks() -> None:
    g, x, y = _train_smooth_net()
    rep = certify(g, (x, y), eps=[0.25, 0.5, 1.0], second_order=True, audit=60, audit_steps=30)
    assert rep.clean_accuracy > 0.9
    assert rep.audit is not None and rep.audit.points == 60 and rep.audit.successes == 0
    so, gl = rep.radii["second_order"], rep.radii["global"]
    correct = rep.correct
    assert float(so[correct].mean()) > 1.2 * float(gl[correct].mean())
    assert rep.wins["second_order"] > correct.sum() // 2
    # A stronger attack at the second-order radius of every certified point still fails.
    idx = torch.from_numpy((so > 0).nonzero()[0])
    g64 = lipschitz_bound(g).folded
    res = pgd_l2(g64, x[idx].double(), y[idx], torch.from_numpy(so[idx.numpy()]), steps=40, restarts=4)
    assert not bool(res.success.any())
    # ... while at three times the radius it does break some points (the attack is not toothless).
    res3 = pgd_l2(g64, x[idx].double(), y[idx], 3 * torch.from_numpy(so[idx.numpy()]), steps=30, restarts=1)
    assert bool(res3.success.any())


def test_second_order_is_refused_with_a_note_for_relu_nets() -> None:
    g = all_nets()["mlp_relu"]
    x = torch.randn(10, *g.input_shape, dtype=D)
    rep = certify(g, (x, torch.zeros(10, dtype=torch.long)), eps=[0.1], second_order=True, lower_bound=False)
    assert "second_order" not in rep.kinds
    assert any("second_order" in n and "smooth" in n for n in rep.notes)


def test_crc_dual_refinement_extends_radii_soundly() -> None:
    """The CRC dual bound (speccert.bounds.crc) never lowers a closed-form radius, extends most of them
    on a trained softplus net, and PGD with restarts finds nothing inside the refined radii."""
    g, x, y = _train_smooth_net()
    plain = certify(g, (x, y), eps=[0.5], second_order=True, lower_bound=False)
    refined = certify(g, (x, y), eps=[0.5], second_order=True, lower_bound=False, crc_steps=20)
    before, after = plain.radii["second_order"], refined.radii["second_order"]
    correct = plain.correct & (before > 0)
    assert (after >= before).all()
    assert (after[correct] > before[correct] * (1 + 1e-6)).mean() > 0.5
    idx = torch.from_numpy(correct.nonzero()[0])
    g64 = lipschitz_bound(g).folded
    res = pgd_l2(g64, x[idx].double(), y[idx], torch.from_numpy(after[idx.numpy()]), steps=40, restarts=4)
    assert not bool(res.success.any())


def test_crc_steps_need_the_second_order_certificate() -> None:
    from speccert.errors import UsageError

    g, x, y = _train_smooth_net()
    with pytest.raises(UsageError, match="--crc-steps"):
        certify(g, (x, y), eps=[0.5], crc_steps=10, lower_bound=False)
