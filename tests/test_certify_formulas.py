"""certify() against direct computations from the formulas, the audit's teeth, and its error handling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from certify_nets import D, all_nets, mlp

from speccert.bounds import certify
from speccert.bounds.audit import pgd_l2
from speccert.bounds.float_error import ErrorModel, ieee_float32
from speccert.bounds.global_margin import GlobalMargin
from speccert.bounds.lipschitz import lipschitz_bound
from speccert.errors import InputError, InternalError, UsageError
from speccert.ir import INPUT, Activation, Affine, Graph, Linear, Node, Reshape, Softmax


def two_layer(seed: int = 0) -> tuple[Graph, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    w1, b1 = torch.randn(20, 8, generator=gen, dtype=D) / 3, torch.randn(20, generator=gen, dtype=D)
    w2, b2 = torch.randn(4, 20, generator=gen, dtype=D) / 4, torch.randn(4, generator=gen, dtype=D)
    g = Graph(
        (8,),
        [
            Node("l1", Linear(w1, b1), (INPUT,)),
            Node("a", Activation("relu"), ("l1",)),
            Node("l2", Linear(w2, b2), ("a",)),
        ],
        dtype=D,
    )
    return g, w1, b1, w2, b2


def test_two_layer_mlp_radii_match_the_formulas() -> None:
    g, w1, b1, w2, b2 = two_layer()
    x = torch.randn(300, 8, dtype=D)
    with torch.no_grad():
        f = torch.relu(x @ w1.T + b1) @ w2.T + b2
    y = torch.randint(0, 4, (300,))
    y[:200] = f[:200].argmax(1)  # mostly correct, some wrong
    rep = certify(g, (x, y), eps=[0.05, 0.1, 0.2], lower_bound=False)
    s1 = float(torch.linalg.matrix_norm(w1, ord=2))
    lip = float(torch.linalg.matrix_norm(w2, ord=2)) * s1
    correct = (f.argmax(1) == y).numpy()
    for i in range(300):
        yi = int(y[i])
        if not correct[i]:
            assert rep.radius[i] == 0 and rep.kind[i] == "none"
            continue
        m = [float(f[i, yi] - f[i, j]) for j in range(4) if j != yi]
        glob = min(m) / (math.sqrt(2) * lip)
        pair = min(
            float(f[i, yi] - f[i, j]) / (float((w2[yi] - w2[j]).norm()) * s1) for j in range(4) if j != yi
        )
        for got, want in (
            (rep.radii["global"][i], glob),
            (rep.radii["pairwise"][i], pair),
            (rep.radius[i], max(glob, pair)),
        ):
            # Equal up to the float64 allowance: margins lowered by 1e-7 x the largest intermediate value.
            assert got <= want and got == pytest.approx(want, rel=1e-6, abs=1e-6)
    assert rep.clean_accuracy == pytest.approx(correct.mean())
    for e, acc in zip(rep.eps, rep.certified_accuracies, strict=True):
        assert acc == pytest.approx(float((correct & (rep.radius >= e)).mean()))
    assert rep.certified_accuracies == sorted(rep.certified_accuracies, reverse=True)
    assert rep.lipschitz_upper == pytest.approx(lip, rel=1e-9) and rep.lipschitz_upper >= lip


def test_linear_classifier_pairwise_radius_is_exact() -> None:
    """For f = W x + b the pairwise radius is the exact distance to the decision boundary: PGD fails at
    the radius and succeeds just beyond it."""
    gen = torch.Generator().manual_seed(1)
    w, b = torch.randn(3, 6, generator=gen, dtype=D), torch.randn(3, generator=gen, dtype=D)
    g = Graph((6,), [Node("l", Linear(w, b), (INPUT,))], dtype=D)
    x = torch.randn(50, 6, generator=gen, dtype=D)
    with torch.no_grad():
        y = g.forward(x).argmax(1)
    rep = certify(g, (x, y), eps=[0.1], audit=50, lower_bound=False)
    r = torch.from_numpy(rep.radius)
    assert rep.audit is not None and rep.audit.successes == 0 and rep.audit.points == 50
    assert not bool(pgd_l2(g, x, y, r, steps=30, restarts=2).success.any())
    assert bool(pgd_l2(g, x, y, r * 1.001 + 1e-9, steps=30, restarts=3).success.all())

    # an empty batch (no certified point to attack) is an empty result, not a reshape error
    none = pgd_l2(g, x[:0], y[:0], r[:0], steps=3, restarts=2)
    assert none.lead.shape == (0,) and none.delta.shape == (0, 6) and not bool(none.success.any())


def test_audit_catches_an_inflated_certificate(monkeypatch: pytest.MonkeyPatch) -> None:
    g, *_ = two_layer(3)
    x = torch.randn(64, 8, dtype=D)
    with torch.no_grad():
        y = g.forward(x).argmax(1)
    real = GlobalMargin.radii
    monkeypatch.setattr(GlobalMargin, "radii", lambda self, batch: real(self, batch) * 50.0)
    with pytest.raises(InternalError, match="inside its certified radius") as info:
        certify(g, (x, y), eps=[0.1], audit=64, lower_bound=False)
    assert info.value.exit_code == 5


def test_normalisation_and_softmax_are_certified_in_data_space() -> None:
    """--mean/--std: the same radii as a graph with the normalisation built in; a final softmax changes
    nothing (the logits are certified, said in a note)."""
    torch.manual_seed(4)
    base = mlp("relu", d=12)
    mean, std = 0.3, 0.2
    inner = [
        Node(
            "norm",
            Affine(torch.full((12,), 1 / std, dtype=D), torch.full((12,), -mean / std, dtype=D)),
            (INPUT,),
        ),
        *[Node(n.name, n.op, tuple("norm" if i == INPUT else i for i in n.inputs)) for n in base.nodes],
        Node("sm", Softmax(), ("l3",)),
    ]
    built_in = Graph((12,), inner, dtype=D)
    x = torch.rand(100, 12, dtype=D)
    with torch.no_grad():
        y = built_in.forward(x).argmax(1)
    a = certify(base, (x, y), eps=[0.01], mean=[mean], std=[std], lower_bound=False)
    b = certify(built_in, (x, y), eps=[0.01], lower_bound=False)
    np.testing.assert_allclose(a.radius, b.radius, rtol=1e-6)
    assert a.clean_accuracy == 1.0 and any("softmax" in n for n in b.notes)
    assert a.to_dict()["data"]["std"] == [std]


def test_bad_data_and_options_give_clear_errors() -> None:
    g = mlp("relu", d=12, c=5)
    x = torch.rand(10, 12, dtype=D)
    with pytest.raises(InputError, match="out of range"):
        certify(g, (x, torch.full((10,), 7)), lower_bound=False)
    with pytest.raises(InputError, match="shape"):
        certify(g, (torch.rand(10, 13), torch.zeros(10, dtype=torch.long)), lower_bound=False)
    with pytest.raises(InputError, match="empty"):
        certify(g, (torch.rand(0, 12), torch.zeros(0, dtype=torch.long)), lower_bound=False)
    with pytest.raises(InputError, match="NaN"):
        certify(g, (torch.full((2, 12), float("nan")), torch.zeros(2, dtype=torch.long)), lower_bound=False)
    with pytest.raises(UsageError, match="eps"):
        certify(g, (x, torch.zeros(10, dtype=torch.long)), eps=[-1.0], lower_bound=False)
    scalar = Graph((12,), [Node("l", Linear(torch.randn(1, 12, dtype=D), None), (INPUT,))], dtype=D)
    with pytest.raises(UsageError, match="classifier"):
        certify(scalar, (x, torch.zeros(10, dtype=torch.long)), lower_bound=False)
    image = Graph((12,), [Node("r", Reshape((3, 4)), (INPUT,))], dtype=D)
    with pytest.raises(UsageError, match="classifier"):
        certify(image, (x, torch.zeros(10, dtype=torch.long)), lower_bound=False)


def test_float32_fast_path_agrees_with_float64() -> None:
    """float32 data takes a float32 pass with a float32 error allowance (float64 where it matters):
    its radii are within the default tolerance 1e-6 of the float64 ones and never above the direct formula."""
    g, w1, b1, w2, b2 = two_layer(5)
    x32 = torch.randn(400, 8).float()
    x64 = x32.double()
    with torch.no_grad():
        f = torch.relu(x64 @ w1.T + b1) @ w2.T + b2
    y = f.argmax(1)
    y[::7] = (y[::7] + 1) % 4
    fast = certify(g, (x32, y), eps=[0.1], lower_bound=False)
    slow = certify(g, (x64, y), eps=[0.1], lower_bound=False)
    np.testing.assert_array_equal(fast.correct, slow.correct)
    np.testing.assert_allclose(fast.radius, slow.radius, rtol=1e-6, atol=1e-12)
    s1 = float(torch.linalg.matrix_norm(w1, ord=2))
    for i in np.flatnonzero(fast.correct)[:100]:
        yi = int(y[i])
        pair = min(
            float(f[i, yi] - f[i, j]) / (float((w2[yi] - w2[j]).norm()) * s1) for j in range(4) if j != yi
        )
        assert fast.radii["pairwise"][i] <= pair


def test_float32_fast_path_only_where_float32_is_ieee(monkeypatch: pytest.MonkeyPatch) -> None:
    """TF32/bf16 "fast float32" (or a GPU, where cuDNN may use TF32, FFT or Winograd) breaks the float32
    error model, so the fast path must then stay off and certify compute in float64."""
    assert ieee_float32(torch.device("cpu"))
    assert not ieee_float32(torch.device("cuda"))
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "medium")
    assert not ieee_float32(torch.device("cpu"))


def test_softplus_threshold_error_is_allowed_for() -> None:
    """torch's softplus returns x above 20 (off by up to 2.07e-9, far more than a few float64 ulps): the
    margin allowance must cover it, or a margin within 1e-9 of a tie would be certified wrongly."""
    g = Graph(
        (2,),
        [Node("s", Activation("softplus"), (INPUT,)), Node("l", Linear(torch.eye(2, dtype=D), None), ("s",))],
        dtype=D,
    )
    bound = lipschitz_bound(g, "auto", torch.device("cpu"))
    errors = ErrorModel(bound.folded, {n.name: n.upper for n in bound.layers})
    x = torch.tensor([[20.001, 40.0]], dtype=D)
    acts = bound.folded.activations(x)
    exact = x + torch.exp(-x)  # log1p(e^-x) = e^-x (1 + O(e^-x))
    error = float(((acts[bound.folded.output] - exact) @ torch.tensor([1.0, -1.0], dtype=D)).abs())
    assert error > 1e-9
    assert float(errors.bound(acts)[0]) >= error


@pytest.mark.parametrize("name", sorted(all_nets()))
def test_no_attack_succeeds_inside_certified_radii_of_random_nets(name: str) -> None:
    """MLP, CNN (stride, padding, BatchNorm, max-pool), residual, concat, smooth nets: every certified
    point survives PGD-L2 (untargeted, targeted at each runner-up, random starts) at its radius."""
    g = all_nets()[name]
    x = torch.randn(16, *g.input_shape, dtype=D)
    with torch.no_grad():
        y = g.forward(x).argmax(1)
    rep = certify(
        g,
        (x, y),
        eps=[0.01],
        audit=16,
        audit_steps=25,
        audit_restarts=6,
        lower_bound=False,
        second_order=True,
    )
    assert rep.audit is not None and rep.audit.points == int((rep.radius > 0).sum()) > 0
    assert rep.audit.successes == 0 and rep.audit.max_lead is not None and rep.audit.max_lead < 0


def test_exact_max_dim_tightens_the_bound_of_a_small_map_conv() -> None:
    """A 64-channel conv on a 6x6 map (Gram side 2304 > 2048): by default bounded on the torus, with
    exact_max_dim=4096 certified exactly; the global bound can only go down and stays above the truth."""
    from speccert.ir import Conv

    gen = torch.Generator().manual_seed(3)
    conv = Conv(
        torch.randn(64, 64, 3, 3, generator=gen, dtype=D) / 24, None, (1, 1), ((1, 1), (1, 1)), (1, 1)
    )
    g = Graph(
        (64, 6, 6),
        [
            Node("c", conv, (INPUT,)),
            Node("a", Activation("relu"), ("c",)),
            Node("r", Reshape((2304,)), ("a",)),
            Node("l", Linear(torch.randn(3, 2304, generator=gen, dtype=D) / 48, None), ("r",)),
        ],
        dtype=D,
    )
    x = torch.randn(16, 64, 6, 6, generator=gen, dtype=D)
    y = g(x).argmax(1)
    base = certify(g, (x, y), eps=[0.1], lower_bound=False)
    exact = certify(g, (x, y), eps=[0.1], exact_max_dim=4096)
    row = {r.name: r for r in exact.layers}["c"]
    assert row.method == "exact" and {r.name: r for r in base.layers}["c"].method != "exact"
    assert row.lower is not None and row.lower <= row.upper <= row.lower * (1 + 3e-4)
    assert exact.lipschitz_lower is not None and exact.lipschitz_lower <= exact.lipschitz_upper
    assert exact.lipschitz_upper <= base.lipschitz_upper
    assert (exact.radius >= base.radius).all()


def test_a_normalisation_of_already_normalised_data_is_noted() -> None:
    """mean/std given for data with negative values (pixels are >= 0: normalised already, as the corpus's
    CIFAR points are) gets a note in the report; data in [0, 1], or no mean/std, gets none."""
    from pathlib import Path

    import numpy as np

    import speccert
    from speccert.bounds import certify

    repo = Path(__file__).resolve().parents[1]
    g = speccert.load(str(repo / "models" / "mlp.onnx"))
    with np.load(repo / "models" / "data" / "fashion_mnist_test_1k.npz") as d:
        x, y = d["x"][:16], d["y"][:16]

    def noted(xs: np.ndarray, mean: list[float] | None) -> list[str]:
        std = None if mean is None else [0.5]
        notes = certify(g, (xs, y), [0.1], mean=mean, std=std).notes
        return [n for n in notes if "already has negative values" in n]

    twice = noted((x - 0.5) / 0.5, [0.5])
    assert len(twice) == 1 and "(min -1)" in twice[0]
    assert noted(x, [0.5]) == [] and noted((x - 0.5) / 0.5, None) == []
