"""The stopping rule: targets, the weight schedule, and stopping exactly when the certifier says so."""

from __future__ import annotations

import pytest
import torch

from speccert.errors import UsageError
from speccert.training.finetune import finetune
from speccert.training.schedule import WeightSchedule
from speccert.training.targets import Measurement, check_targets, parse_target, parse_targets
from speccert.training.toy import separable_data, toy_mlp


@pytest.mark.parametrize(
    "text,metric,op,value,eps",
    [
        ("cra@0.5>=0.70", "cra", ">=", 0.70, 0.5),
        (" CRA@1 >= 70% ", "cra", ">=", 0.70, 1.0),
        ("clean>=0.85", "clean", ">=", 0.85, None),
        ("lipschitz<=5", "lipschitz", "<=", 5.0, None),
    ],
)
def test_parse_target(text: str, metric: str, op: str, value: float, eps: float | None) -> None:
    t = parse_target(text)
    assert (t.metric, t.op, t.value, t.eps) == (metric, op, pytest.approx(value), eps)


@pytest.mark.parametrize(
    "bad",
    [
        "cra>=0.7",
        "cra@0.5<=0.7",
        "clean>=1.5",
        "lipschitz>=5",
        "lipschitz<=0",
        "acc>=0.9",
        "cra@-1>=0.5",
        "clean>=abc",
        "",
    ],
)
def test_bad_targets_are_usage_errors(bad: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse_target(bad)
    assert "\n" not in str(exc.value)


def test_duplicate_targets_refused() -> None:
    with pytest.raises(UsageError, match="twice"):
        parse_targets(["clean>=0.5", "clean>=0.6"])


def test_check_targets_and_shortfall() -> None:
    ts = parse_targets(["cra@0.5>=0.7", "clean>=0.85", "lipschitz<=5"])
    m = Measurement(clean=0.9, cra={0.5: 0.65}, lipschitz=6.0)
    c = check_targets(ts, m)
    assert not c.met
    assert c.missed == [
        "cra@0.5>=0.7: measured 0.6500, short by 0.0500",
        "lipschitz<=5: measured 6, 1 too high",
    ]
    assert check_targets(ts, Measurement(0.85, {0.5: 0.7}, 5.0)).met  # boundaries hold


def test_weight_schedule_rule() -> None:
    ts = parse_targets(["cra@0.5>=0.7", "clean>=0.8"])
    s = WeightSchedule(1.0)
    assert s.update(ts, Measurement(0.9, {0.5: 0.3}, 10))[0] == 1.0  # first measurement: improvement
    assert s.update(ts, Measurement(0.9, {0.5: 0.5}, 10))[0] == 1.0  # improving
    assert s.update(ts, Measurement(0.9, {0.5: 0.502}, 10))[0] == 2.0  # stalled (< 0.005 better): raise
    assert s.update(ts, Measurement(0.7, {0.5: 0.6}, 10))[0] == 1.0  # clean missed: lower
    s2 = WeightSchedule(0.01)
    s2.observe(ts, Measurement(0.9, {0.5: 0.0}, 200))  # the input model is the reference
    assert s2.update(ts, Measurement(0.9, {0.5: 0.0}, 150))[0] == 0.02  # no certified progress: raise


def test_weight_used_each_epoch_follows_the_rule() -> None:
    ev, _ = _scripted([(0.9, 0.0), (0.9, 0.0), (0.9, 0.0), (0.8, 0.1)])
    res = finetune(
        toy_mlp(dtype=torch.float32),
        _data(),
        _data(30, 2),
        targets=["cra@0.1>=0.7", "clean>=0.85"],
        penalty="spectral",
        penalty_weight=0.1,
        epochs=3,
        batch_size=20,
        evaluator=ev,
    )
    assert [r.weight for r in res.history] == [0.1, 0.1, 0.2, 0.4]  # weight used in that epoch
    assert res.history[3].note == "clean target missed: weight lowered"


def _scripted(values: list[tuple[float, float]]):  # noqa: ANN202
    calls: list[int] = []

    def evaluate(graph):  # noqa: ANN001, ANN202
        clean, cra = values[min(len(calls), len(values) - 1)]
        calls.append(1)
        return Measurement(clean, {0.1: cra}, 3.0)

    return evaluate, calls


def _data(n: int = 60, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return separable_data(n, (6,), seed=seed)


def test_stops_at_the_first_epoch_the_evaluator_says_every_target_holds() -> None:
    ev, calls = _scripted([(0.5, 0.1), (0.8, 0.4), (0.9, 0.69), (0.9, 0.70), (0.95, 0.9)])
    res = finetune(
        toy_mlp(dtype=torch.float32),
        _data(),
        _data(30, 2),
        targets=["cra@0.1>=0.7", "clean>=0.85"],
        penalty="spectral",
        epochs=10,
        batch_size=20,
        evaluator=ev,
    )
    assert res.met and res.exit_code == 0
    assert [r.epoch for r in res.history] == [0, 1, 2, 3]  # epoch 0 = the input model
    assert len(calls) == 4 and res.best_epoch == 3
    assert [r.met for r in res.history] == [False, False, False, True]


def test_budget_exhausted_exit_1_names_the_missed_target_and_keeps_the_best() -> None:
    ev, _ = _scripted([(0.5, 0.1), (0.9, 0.6), (0.9, 0.5)])
    res = finetune(
        toy_mlp(dtype=torch.float32),
        _data(),
        _data(30, 2),
        targets=["cra@0.1>=0.7", "clean>=0.85"],
        penalty="spectral",
        epochs=2,
        batch_size=20,
        evaluator=ev,
    )
    assert not res.met and res.exit_code == 1
    assert res.best_epoch == 1
    assert res.missed == ["cra@0.1>=0.7: measured 0.6000, short by 0.1000"]


def test_input_already_meeting_targets_trains_nothing() -> None:
    ev, calls = _scripted([(0.99, 0.99)])
    g = toy_mlp(dtype=torch.float32)
    before = {k: v.clone() for k, v in g.parameters().items()}
    res = finetune(g, _data(), _data(30, 2), targets=["cra@0.1>=0.7"], penalty="lmt", epochs=5, evaluator=ev)
    assert res.met and len(calls) == 1 and [r.epoch for r in res.history] == [0]
    for k, v in g.parameters().items():
        assert torch.equal(before[k], v)


def test_stopping_agrees_with_the_real_certifier() -> None:
    """Every epoch's 'met' is exactly what the certifier's own report says; the run stops at the first."""
    from speccert.bounds import certify
    from speccert.training.evaluate import certifier_evaluator

    xv, yv = _data(90, 2)
    from speccert.data import make_dataset

    val = make_dataset(xv.numpy(), yv.numpy(), "val")
    inner = certifier_evaluator(val, [0.1], "cpu")
    reports = []

    def ev(graph):  # noqa: ANN001, ANN202
        m = inner(graph)
        independent = certify(graph, val, [0.1], lower_bound=False)  # the certifier, called again directly
        reports.append((independent.certified_accuracy(0.1), independent.clean_accuracy))
        return m

    res = finetune(
        toy_mlp(dtype=torch.float32),
        _data(300, 1),
        (xv, yv),
        targets=["cra@0.1>=0.9", "clean>=0.9"],
        penalty="lmt",
        epochs=8,
        lr=1e-2,
        batch_size=30,
        evaluator=ev,
    )
    assert res.met
    holds = [cra >= 0.9 and clean >= 0.9 for cra, clean in reports]
    assert [r.met for r in res.history] == holds
    assert holds.index(True) == len(holds) - 1  # stopped at the first epoch where it holds
    assert res.history[0].lipschitz > 0


def test_best_epoch_is_the_closest_to_the_targets_not_the_one_meeting_most() -> None:
    """The input meets only clean; epoch 2 loses a little clean but gains much robustness: epoch 2 is best."""
    ev, _ = _scripted([(0.95, 0.0), (0.84, 0.3), (0.84, 0.5)])
    res = finetune(
        toy_mlp(dtype=torch.float32),
        _data(),
        _data(30, 2),
        targets=["cra@0.1>=0.7", "clean>=0.85"],
        penalty="spectral",
        epochs=2,
        batch_size=20,
        evaluator=ev,
    )
    assert res.best_epoch == 2 and not res.met
