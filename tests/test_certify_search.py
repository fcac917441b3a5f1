"""`--radius-search eps`: local and crown decide only the requested eps (speccert.bounds.certificates.
_eps_search). Sound against strong attacks; every eps-mode radius is one direct bound evaluation at a
requested eps; every point the full search certifies at eps and eps mode does not is explained by a
failing direct test (or the first-order cap); on networks where the bound does not depend on r both
modes certify the same points."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from certify_nets import D
from test_bounds_local import attack_distance, conv_pool_net, minimal_norm_distance, relu_mlp

from speccert.bounds import certify
from speccert.bounds.certificate import finish_radius
from speccert.bounds.certificates._eps_search import ball_radius
from speccert.bounds.certificates._per_point import PerPointCertificate
from speccert.bounds.certificates.crown import CrownCertificate
from speccert.bounds.certificates.local import LocalCertificate
from speccert.bounds.certify_result import CertifyReport
from speccert.bounds.schema import validate_report
from speccert.exporters import save_onnx
from speccert.ir import INPUT, Graph, Linear, Node

KINDS: dict[str, type[PerPointCertificate]] = {"local": LocalCertificate, "crown": CrownCertificate}
KINDS_ORIG = {k: cls.test_at for k, cls in KINDS.items()}  # before the fixture wraps them


@dataclass
class Calls:
    """What eps mode asked of the bound, per point (keyed by the input's bytes)."""

    top: dict[bytes, float] = field(default_factory=dict)
    tests: dict[bytes, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    rows: dict[bytes, tuple[PerPointCertificate, torch.Tensor, torch.Tensor, torch.Tensor]] = field(
        default_factory=dict
    )


@pytest.fixture
def record(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], Calls]]:
    """record(kind) -> Calls filled by every first_order / test_at call of that kind from now on."""

    def start(kind: str) -> Calls:
        cls, calls = KINDS[kind], Calls()
        first, test = cls.first_order, cls.test_at

        def first_order(
            self: PerPointCertificate, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor
        ) -> torch.Tensor:
            top = first(self, x, y, m)
            for i in range(x.shape[0]):
                calls.top[x[i].numpy().tobytes()] = float(top[i])
            return top

        def test_at(
            self: PerPointCertificate, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor, r: torch.Tensor
        ) -> torch.Tensor:
            got = test(self, x, y, m, r)
            for i in range(x.shape[0]):
                key = x[i].numpy().tobytes()
                calls.tests[key].append((float(r[i]), float(got[i])))
                calls.rows[key] = (self, x[i : i + 1], y[i : i + 1], m[i : i + 1])
            return got

        monkeypatch.setattr(cls, "first_order", first_order)
        monkeypatch.setattr(cls, "test_at", test_at)
        return calls

    yield start


def _eps_between(radii: np.ndarray) -> list[float]:
    """Three eps between distinct positive radii (no point sits exactly at an eps)."""
    r = np.unique(radii[radii > 0])
    mids = np.sqrt(r[1:] * r[:-1]) if r.size > 1 else r * 0.5
    return sorted({float(mids[int(q * (mids.size - 1))]) for q in (0.2, 0.5, 0.8)})


def _data(g: Graph, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, *g.input_shape, generator=torch.Generator().manual_seed(seed), dtype=D)
    with torch.no_grad():
        y = g.forward(x).argmax(1)
    y[: n // 6] = (y[: n // 6] + 1) % g.output_shape[0]  # a few misclassified points: never tested
    return x, y


def _run(
    g: Graph, data: tuple[torch.Tensor, torch.Tensor], kinds: list[str], eps: list[float], mode: str
) -> CertifyReport:
    return certify(
        g, data, eps, certificates=kinds, lower_bound=False, radius_search=mode, audit=len(data[0])
    )


def _affine_net(seed: int) -> Graph:
    gen = torch.Generator().manual_seed(seed)
    w1, w2 = torch.randn(12, 6, generator=gen, dtype=D), torch.randn(4, 12, generator=gen, dtype=D)
    return Graph(
        (6,),
        [
            Node("l1", Linear(w1, torch.randn(12, generator=gen, dtype=D)), (INPUT,)),
            Node("l2", Linear(w2, torch.zeros(4, dtype=D)), ("l1",)),
        ],
        dtype=D,
    )


NETS: dict[str, Callable[[], Graph]] = {
    "mlp": lambda: relu_mlp(3, 8, [16, 16], 4),
    "conv_pool": lambda: conv_pool_net(5, 3, 6, 3, 2, 3),
}


@pytest.mark.parametrize("kind", ["local", "crown"])
@pytest.mark.parametrize("net", sorted(NETS))
def test_eps_decisions_are_direct_tests_and_misses_are_explained(
    net: str, kind: str, record: Callable[[str], Calls], tmp_path: Path
) -> None:
    g = NETS[net]()
    data = _data(g, 24, 1)
    full = _run(g, data, [kind], [0.1], "full")
    eps = _eps_between(full.radii[kind])
    calls = record(kind)
    fast = _run(g, data, ["pairwise", kind], eps, "eps")
    assert fast.environment["radius_search"] == "eps" and full.environment["radius_search"] == "full"
    x, y = data
    misses = dict.fromkeys(eps, 0)
    for i in range(x.shape[0]):
        key = x[i].numpy().tobytes()
        got, tests = float(fast.radii[kind][i]), calls.tests.get(key, [])
        if not fast.correct[i] or fast.radii["pairwise"][i] >= eps[-1]:
            assert not tests and key not in calls.top, "a misclassified or already certified point was tested"
            continue
        if got > 0:  # the reported radius is what one test at a requested eps proved
            assert any(
                abs(r - ball_radius(e)) <= 1e-15 * r and float(finish_radius(torch.tensor(v, dtype=D))) == got
                for r, v in tests
                for e in eps
            )
            # and that test, made again on this point alone, proves it (no row of the batch mixed up)
            cert, xi, yi, mi = calls.rows[key]
            r, v = next((r, v) for r, v in tests if float(finish_radius(torch.tensor(v, dtype=D))) == got)
            again = float(KINDS_ORIG[kind](cert, xi, yi, mi, torch.tensor([r], dtype=D))[0])
            assert again == pytest.approx(v, rel=1e-9)
        for e in eps:
            if full.radius[i] >= e and fast.radius[i] < e:  # full certifies e, eps mode does not: why
                misses[e] += 1
                failed_at_e = any(abs(r - ball_radius(e)) <= 1e-15 * r and v < r for r, v in tests)
                probe_failed = bool(tests) and tests[0][0] < ball_radius(e) and tests[0][1] < tests[0][0]
                assert calls.top[key] < e or failed_at_e or probe_failed, (
                    f"point {i}: full certifies {e}; eps mode neither failed a test there nor the probe"
                )
    for e, a_fast in zip(eps, fast.certified_accuracies, strict=True):
        assert a_fast >= full.certified_accuracy(e) - misses[e] / x.shape[0] - 1e-12, e
    _attack(g, data, fast, tmp_path)


def _attack(g: Graph, data: tuple[torch.Tensor, torch.Tensor], rep: CertifyReport, tmp_path: Path) -> None:
    """No PGD-L2 (restarts, bisection on the attack radius) or minimal-norm attack, checked in
    onnxruntime, finds an adversarial point within a radius eps mode reports (certify's own audit,
    PGD at the radius, passed too)."""
    x, y = data
    keep = rep.correct & (rep.radius > 0)
    onnx = save_onnx(g.to("cpu", torch.float32), tmp_path / "net.onnx")
    r = rep.radius[keep]
    dist = attack_distance(g, x[keep], y[keep], torch.from_numpy(r), onnx)
    assert np.all(r <= dist), "PGD beat an eps-mode radius"
    assert np.all(r <= minimal_norm_distance(g, x[keep], y[keep], onnx)), "a minimal-norm attack beat one"


@pytest.mark.parametrize("kind", ["local", "crown"])
def test_where_the_bound_does_not_depend_on_r_both_modes_certify_the_same_points(kind: str) -> None:
    """An affine network: both bounds are the exact boundary distance at every r, so a full search and
    the eps tests decide every eps alike."""
    g = _affine_net(2)
    data = _data(g, 30, 4)
    full = _run(g, data, [kind], [0.1], "full")
    eps = _eps_between(full.radii[kind])
    fast = _run(g, data, [kind], eps, "eps")
    full = _run(g, data, [kind], eps, "full")
    assert fast.certified_accuracies == full.certified_accuracies
    assert 0 < fast.certified_accuracies[-1] < fast.certified_accuracies[0] < fast.clean_accuracy
    assert np.all(fast.radius <= full.radius * (1 + 1e-6))


def test_eps_mode_skips_what_is_decided_and_records_the_mode(record: Callable[[str], Calls]) -> None:
    """At an eps every correct point reaches by pairwise alone, crown evaluates nothing; the JSON
    records the mode and validates; full is the default."""
    g = relu_mlp(0, 6, [8], 3)
    data = _data(g, 12, 0)
    calls = record("crown")
    rep = _run(g, data, ["pairwise", "crown"], [1e-6], "eps")
    assert not calls.top and not calls.tests
    assert rep.certified_accuracies == [rep.clean_accuracy] and np.all(rep.radii["crown"] == 0)
    d = rep.to_dict()
    validate_report(d)
    assert d["environment"]["radius_search"] == "eps"
    assert certify(g, data, [0.1], lower_bound=False).environment["radius_search"] == "full"


def test_untested_names_exactly_the_points_a_kind_did_not_evaluate(record: Callable[[str], Calls]) -> None:
    """In eps mode a per-point kind is not run where the kinds before it certify the point at the largest
    eps: those samples (and only those) list it under "untested" in the JSON, as the calls show; full
    mode and misclassified points never do, and the console says how many."""
    import io

    from rich.console import Console

    from speccert.cli.certify_render import render

    g = relu_mlp(0, 6, [8], 3)
    x, y = _data(g, 24, 1)
    first = _run(g, (x, y), ["pairwise"], [1e-6], "full")
    eps = float(np.median(first.radius[first.radius > 0]))  # about half the certified points reach it
    calls = record("local")
    rep = _run(g, (x, y), ["pairwise", "local"], [eps / 2, eps], "eps")
    d = rep.to_dict()
    validate_report(d)
    listed = {s["index"] for s in d["samples"] if "untested" in s}
    assert all(s["untested"] == ["local"] for s in d["samples"] if "untested" in s)
    reached = {i for i in range(len(y)) if rep.radii["pairwise"][i] >= eps and rep.correct[i]}
    assert listed == reached and 0 < len(listed) < int(rep.correct.sum())
    evaluated = {i for i in range(len(y)) if x[i].numpy().tobytes() in calls.top}
    assert evaluated.isdisjoint(listed) and evaluated | listed == set(np.flatnonzero(rep.correct).tolist())
    assert all(rep.radii["local"][i] == 0 for i in listed)
    assert "untested" not in str(_run(g, (x, y), ["pairwise", "local"], [eps], "full").to_dict()["samples"])
    out = io.StringIO()
    render(d, Console(file=out, width=200))
    assert (
        f"Not evaluated (the kinds before them certify these points at the largest eps): local {len(listed)}"
        in (out.getvalue())
    )


def test_cli_end_to_end_and_a_bad_mode_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from speccert.cli.app import main

    models = Path(__file__).resolve().parents[1] / "models"
    args = [
        "certify",
        str(models / "cnn.onnx"),
        "--data",
        str(models / "data/fashion_mnist_test_1k.npz"),
        "--limit",
    ]
    assert main([*args, "20", "--certificate", "crown", "--radius-search", "fast"]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--radius-search" in lines[0] and "Traceback" not in err
    out = tmp_path / "r.json"
    assert main([*args, "20", "--certificate", "crown", "--radius-search", "eps", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "--radius-search eps" in text and "not a searched radius" in text
    d = json.loads(out.read_text())
    assert d["environment"]["radius_search"] == "eps" and d["certificate"]["n"] == 20


@pytest.mark.parametrize(
    ("per_s", "shown"), [(12657.4, "12657"), (10.0, "10"), (9.87, "9.87"), (0.0318, "0.0318"), (0.0, "0")]
)
def test_slow_rates_are_not_printed_as_zero(per_s: float, shown: str) -> None:
    """A certify run at seconds per point (local, crown) said '0 samples/s'."""
    from speccert.cli.certify_render import rate

    assert rate(per_s) == shown
