"""The weight average (speccert.training.ema) and a fine-tuning run that certifies and writes it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import speccert
from speccert.errors import UsageError
from speccert.exporters.onnx_export import save_onnx
from speccert.ir.graph import Graph
from speccert.training.checkpoint import load_checkpoint, run_dir_for
from speccert.training.ema import WeightAverage
from speccert.training.finetune import finetune
from speccert.training.targets import Measurement
from speccert.training.toy import separable_data, toy_mlp

TRAIN = separable_data(80, (6,), seed=1)
VAL = separable_data(30, (6,), seed=2)


def test_average_follows_the_formula_and_swaps_back() -> None:
    torch.manual_seed(0)
    m = torch.nn.Linear(3, 2)
    w0 = m.weight.detach().clone()
    avg = WeightAverage(m, 0.5)
    ref = w0.clone()
    for t in range(4):
        with torch.no_grad():
            m.weight.add_(torch.randn_like(m.weight))
        avg.update(m, t)
        d = min(0.5, (1 + t) / (10 + t))  # t = 0..3: (1+t)/(10+t) < 0.5, the warm-up decides
        ref = d * ref + (1 - d) * m.weight.detach()
    assert torch.allclose(avg.avg["weight"], ref, rtol=0, atol=1e-6)
    own = m.weight.detach().clone()
    with avg.applied(m):
        assert torch.equal(m.weight.detach(), avg.avg["weight"])
        x = torch.randn(5, 3)
        assert torch.allclose(m(x), x @ ref.T + avg.avg["bias"], atol=1e-6)
    assert torch.equal(m.weight.detach(), own)  # training continues on its own weights


def test_decay_outside_the_open_unit_interval_is_refused() -> None:
    for d in (0.0, 1.0, -0.1):
        with pytest.raises(UsageError, match="decay"):
            WeightAverage(torch.nn.Linear(2, 2), d)


def _measure(graph: Graph) -> Measurement:
    with torch.no_grad():
        acc = float((graph(VAL[0].to(graph.dtype)).argmax(1) == VAL[1]).double().mean())
    return Measurement(acc, {0.1: 0.0}, 1.0)  # never met: every epoch runs, the best one is written


def _run(model: Path, out: Path, seen: list[dict[str, torch.Tensor]], **kw) -> object:  # noqa: ANN003
    def measure(graph: Graph) -> Measurement:
        seen.append({k: v.detach().clone() for k, v in graph.parameters().items()})
        return _measure(graph)

    args = dict(targets=["cra@0.1>=0.9"], penalty="spectral", epochs=3, lr=5e-2, batch_size=20, seed=3)
    args.update(kw)
    return finetune(str(model), TRAIN, VAL, out=out, evaluator=measure, **args)


def test_the_average_is_what_is_certified_written_and_resumed(tmp_path: Path) -> None:
    model = tmp_path / "in.onnx"
    save_onnx(toy_mlp(dtype=torch.float32), model)
    seen: list[dict[str, torch.Tensor]] = []
    res = _run(model, tmp_path / "a.onnx", seen, ema=0.9, checkpoint_every=3)
    ck = load_checkpoint(run_dir_for(tmp_path / "a.onnx") / "last.pt")
    raw = ck["model"]  # the optimiser's weights after the last step
    ema = ck["ema"]
    assert set(ema) == set(raw) and any(not torch.equal(ema[k], raw[k]) for k in raw)
    # The last epoch measured the average, not the raw weights.
    last_seen = seen[-1]
    for k, v in ema.items():  # (module keys are spelled differently from the graph's names)
        assert any(torch.equal(s, v) for s in last_seen.values()), k
    for k, v in raw.items():
        if not torch.equal(v, ema[k]):
            assert not any(torch.equal(s, v) for s in last_seen.values()), k
    # The file holds the measured weights of the best epoch.
    best = res.best_epoch  # type: ignore[attr-defined]
    written = [v.detach() for v in speccert.load(str(tmp_path / "a.onnx")).parameters().values()]
    assert len(written) == len(seen[best])
    for k, v in seen[best].items():
        assert any(w.shape == v.shape and torch.equal(w, v.to(w.dtype)) for w in written), k
    # Without the average the run certifies other weights (the average is not a no-op here).
    plain: list[dict[str, torch.Tensor]] = []
    _run(model, tmp_path / "p.onnx", plain)
    assert any(not torch.equal(plain[-1][k], seen[-1][k]) for k in seen[-1])

    # Crash after the step-6 checkpoint, resume: the same averages, epoch for epoch.
    class Boom(RuntimeError):
        pass

    def crash(epoch: int, step: int, total: int, loss: float) -> None:
        if epoch == 2 and step == 2:
            raise Boom

    again: list[dict[str, torch.Tensor]] = []
    with pytest.raises(Boom):
        _run(model, tmp_path / "b.onnx", again, ema=0.9, checkpoint_every=3, on_step=crash)
    _run(model, tmp_path / "b.onnx", again, ema=0.9, checkpoint_every=3, resume=True)
    for k, v in seen[-1].items():
        assert torch.equal(again[-1][k], v), k
    with pytest.raises(UsageError, match="ema"):  # a resume must keep the average's decay
        _run(model, tmp_path / "b.onnx", [], ema=0.5, checkpoint_every=3, resume=True)
