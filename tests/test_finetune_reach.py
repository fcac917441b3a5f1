"""Early stop when a target is out of reach at the current trend (speccert.training.reach)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from speccert.exporters.onnx_export import save_onnx
from speccert.ir.graph import Graph
from speccert.training.finetune import finetune
from speccert.training.reach import ReachWatch, misses, project
from speccert.training.records import EpochRecord
from speccert.training.targets import Measurement, parse_target
from speccert.training.toy import separable_data, toy_mlp


def _rec(epoch: int, cra: float, clean: float = 0.9, lip: float = 1.0) -> EpochRecord:
    return EpochRecord(epoch, 0.0, clean, {0.5: cra}, lip, 1.0, False, [], 1.0)


def test_projection_is_the_least_squares_line_extrapolated() -> None:
    t = parse_target("cra@0.5>=0.8")
    ys = [0.60, 0.63, 0.61, 0.66]
    recent = [_rec(e + 5, y) for e, y in enumerate(ys)]
    p = project(t, recent, 3)
    slope, icpt = np.polyfit(np.arange(5, 9), ys, 1)  # ground truth: numpy's least squares
    assert math.isclose(p.slope, slope, rel_tol=1e-12)
    assert math.isclose(p.projected, icpt + slope * (8 + 3), rel_tol=1e-12)
    assert misses(p)  # 0.66 + 3 * ~0.017 < 0.8
    assert not misses(project(t, recent, 20))  # enough epochs left at that slope


def test_lipschitz_targets_are_fitted_on_log_l() -> None:
    t = parse_target("lipschitz<=0.2")
    recent = [_rec(e, 0.0, lip=8.0 * 0.5**e) for e in range(1, 5)]  # halves every epoch
    p = project(t, recent, 2)
    assert math.isclose(math.exp(p.slope), 0.5, rel_tol=1e-9)
    assert math.isclose(p.projected, 8.0 * 0.5**6, rel_tol=1e-9)
    assert not misses(p)  # 0.125 <= 0.2 two epochs on
    assert misses(project(t, recent, 0))  # no epoch left: the fitted value at epoch 4, 0.5 > 0.2


def test_watch_waits_for_the_ramp_and_needs_two_strikes() -> None:
    targets = [parse_target("cra@0.5>=0.8"), parse_target("clean>=0.85")]
    watch = ReachWatch.for_run(targets, epochs=20, anneal=0.3)  # ramp 6 epochs + window 4
    assert watch.first_epoch == 10
    flat = [_rec(0, 0.0)] + [_rec(e, 0.70) for e in range(1, 13)]
    assert watch.check(flat[:10], 11) == ""  # epoch 9: before the first judged epoch
    assert watch.check(flat[:11], 10) == ""  # epoch 10: first strike
    why = watch.check(flat[:12], 9)  # epoch 11: second strike
    assert "cra@0.5>=0.8" in why and "+0.00 points per epoch" in why and "clean" not in why
    rising = [_rec(0, 0.0)] + [_rec(e, 0.5 + 0.03 * e) for e in range(1, 13)]
    w2 = ReachWatch.for_run(targets, epochs=20, anneal=0.3)
    assert all(w2.check(rising[: k + 1], 20 - k) == "" for k in range(1, 13))  # 0.86 + ... reaches 0.8


def test_a_run_that_stalls_stops_before_its_budget(tmp_path: Path) -> None:
    train, val = separable_data(60, (6,), seed=1), separable_data(20, (6,), seed=2)
    model = tmp_path / "in.onnx"
    save_onnx(toy_mlp(dtype=torch.float32), model)

    def stalled(graph: Graph) -> Measurement:  # accuracy measured; the certified accuracy never moves
        with torch.no_grad():
            acc = float((graph(val[0].to(graph.dtype)).argmax(1) == val[1]).double().mean())
        return Measurement(acc, {0.1: 0.2}, 1.0)

    args = dict(targets=["cra@0.1>=0.9"], penalty="spectral", epochs=12, lr=1e-3, batch_size=30)
    res = finetune(str(model), train, val, evaluator=stalled, stop_out_of_reach=True, **args)
    # first judged epoch 4 (no ramp), second strike at epoch 5: 5 of 12 epochs run
    assert res.history[-1].epoch == 5 and res.exit_code == 1
    assert any("out of reach at the current trend" in n for n in res.notes)
    full = finetune(str(model), train, val, evaluator=stalled, **args)  # the flag is opt-in
    assert full.history[-1].epoch == 12


def test_budget_left_counts_epochs_and_time_at_the_last_epochs_pace() -> None:
    from speccert.training.reach import epochs_left, out_of_time

    hist = [_rec(0, 0.0), _rec(3, 0.5)]  # each record took 1.0 s
    assert epochs_left(10, None, 100.0, hist) == 7  # epoch budget only
    assert epochs_left(10, 5.5, 2.0, hist) == 3  # 3.5 s left at 1 s an epoch
    assert epochs_left(10, 1.0, 2.0, hist) == 0  # already past the budget
    assert out_of_time(None, 1e9, hist) == ""
    assert out_of_time(10.0, 8.5, hist) == ""  # 8.5 + 1 <= 10
    assert "time budget 10 s: 10 s spent" in out_of_time(10.0, 9.5, hist)
