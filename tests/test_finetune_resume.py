"""Reliability: atomic checkpoints, resume after an injected crash or a real kill -9 gives the weights of
an uninterrupted run, NaN loss stops cleanly, the input is never overwritten."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import speccert
from speccert.errors import UsageError
from speccert.exporters.onnx_export import save_onnx
from speccert.ir.graph import Graph
from speccert.training.checkpoint import load_checkpoint, run_dir_for
from speccert.training.finetune import TrainingDiverged, finetune
from speccert.training.targets import Measurement
from speccert.training.toy import separable_data, toy_mlp

TRAIN = separable_data(80, (6,), seed=1)
VAL = separable_data(30, (6,), seed=2)


class Boom(RuntimeError):
    """The injected crash of the resume tests."""


def crash_after_step_6(epoch: int, step: int, total: int, loss: float) -> None:
    """An on_step hook that crashes at epoch 2, step 2: global step 6 with 4 steps per epoch, just after
    a checkpoint every 3 steps (or every epoch's end) was written."""
    if epoch == 2 and step == 2:
        raise Boom


def evaluator_on(val: tuple[torch.Tensor, torch.Tensor]) -> Callable[[Graph], Measurement]:
    """An evaluator deterministic in the weights (so a resumed run sees the same numbers) that never
    meets a cra target: accuracy on `val`, and half of it as cra@0.1."""

    def evaluate(graph: Graph) -> Measurement:
        with torch.no_grad():
            acc = float((graph(val[0].to(graph.dtype)).argmax(1) == val[1]).double().mean())
        return Measurement(acc, {0.1: acc / 2}, 1.0)

    return evaluate


accuracy_evaluator = evaluator_on(VAL)


def _model(tmp_path: Path) -> Path:
    p = tmp_path / "in.onnx"
    save_onnx(toy_mlp(dtype=torch.float32), p)
    return p


def _run(model: Path, out: Path, **kw) -> object:  # noqa: ANN003
    args = dict(
        targets=["cra@0.1>=0.9"],
        penalty="spectral",
        epochs=3,
        lr=5e-3,
        batch_size=20,
        seed=3,
        checkpoint_every=3,
        evaluator=accuracy_evaluator,
    )
    args.update(kw)
    return finetune(str(model), TRAIN, VAL, out=out, **args)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    """The written model's tensors and the last checkpoint's (the final trained state)."""
    out = {k: v.detach().clone() for k, v in speccert.load(str(path)).parameters().items()}
    last = load_checkpoint(run_dir_for(path) / "last.pt")["model"]
    return out | {f"last:{k}": v for k, v in last.items()}


def test_resume_after_injected_crash_matches_uninterrupted(tmp_path: Path) -> None:
    model = _model(tmp_path)
    ref = _run(model, tmp_path / "a.onnx")

    with pytest.raises(Boom):
        _run(model, tmp_path / "b.onnx", on_step=crash_after_step_6)
    ck = load_checkpoint(run_dir_for(tmp_path / "b.onnx") / "last.pt")
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == (2, 2, 6)  # nothing lost
    res = _run(model, tmp_path / "b.onnx", resume=True)
    wa, wb = _weights(tmp_path / "a.onnx"), _weights(tmp_path / "b.onnx")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert [r.clean for r in res.history] == [r.clean for r in ref.history]  # type: ignore[attr-defined]
    assert [r.weight for r in res.history] == [r.weight for r in ref.history]  # type: ignore[attr-defined]


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys, torch
    sys.path.insert(0, sys.argv[3])
    torch.set_num_threads(int(sys.argv[4]))
    from test_finetune_resume import _run
    from pathlib import Path
    def die(epoch, step, total, loss):
        if epoch == 2 and step == 3:  # global step 7: the last checkpoint was at step 6
            os.kill(os.getpid(), signal.SIGKILL)
    _run(Path(sys.argv[1]), Path(sys.argv[2]), on_step=die)
""")


def test_resume_after_kill_9_matches_uninterrupted(tmp_path: Path) -> None:
    model = _model(tmp_path)
    _run(model, tmp_path / "a.onnx")
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            str(model),
            str(tmp_path / "b.onnx"),
            str(Path(__file__).parent),
            str(torch.get_num_threads()),
        ],
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    run = run_dir_for(tmp_path / "b.onnx")
    assert not (tmp_path / "b.onnx").exists()
    assert not list(run.glob("*.tmp"))  # no torn temporary left visible as a checkpoint
    assert load_checkpoint(run / "last.pt")["global_step"] == 6  # at most one step lost
    _run(model, tmp_path / "b.onnx", resume=True)
    wa, wb = _weights(tmp_path / "a.onnx"), _weights(tmp_path / "b.onnx")
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_same_seed_same_run_different_seed_different_run(tmp_path: Path) -> None:
    model = _model(tmp_path)
    _run(model, tmp_path / "a.onnx", epochs=1)
    _run(model, tmp_path / "b.onnx", epochs=1)
    _run(model, tmp_path / "c.onnx", epochs=1, seed=4)
    wa, wb, wc = (_weights(tmp_path / f"{n}.onnx") for n in "abc")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    model = _model(tmp_path)
    from speccert.data import Dataset

    x, y = TRAIN[0].clone().numpy(), TRAIN[1].numpy()
    x[:, 0] = 1e38  # overflows to inf in the first layer: a diverging run (loaders refuse NaN inputs)
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf) at epoch 1, step 1") as exc:
        finetune(
            str(model),
            Dataset(x, y, "poisoned"),
            VAL,
            targets=["cra@0.1>=0.9"],
            penalty="spectral",
            epochs=2,
            batch_size=20,
            out=tmp_path / "o.onnx",
            evaluator=accuracy_evaluator,
        )
    assert exc.value.exit_code == 1
    ck = load_checkpoint(run_dir_for(tmp_path / "o.onnx") / "last.pt")
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


def test_refuses_to_overwrite_input_or_existing_output(tmp_path: Path) -> None:
    model = _model(tmp_path)
    before = model.read_bytes()
    with pytest.raises(UsageError, match="input"):
        _run(model, model, overwrite=True)
    existing = tmp_path / "exists.onnx"
    existing.write_bytes(b"x")
    with pytest.raises(UsageError, match="already exists"):
        _run(model, existing)
    with pytest.raises(UsageError, match="must end with .onnx"):
        _run(model, tmp_path / "out.pt2")
    with pytest.raises(UsageError, match="no checkpoint"):
        _run(model, tmp_path / "fresh.onnx", resume=True)
    assert model.read_bytes() == before


def test_resume_a_finished_run_with_a_larger_budget_continues_it(tmp_path: Path) -> None:
    model = _model(tmp_path)
    first = _run(model, tmp_path / "o.onnx", epochs=1)
    more = _run(model, tmp_path / "o.onnx", epochs=2, resume=True)
    assert [r.epoch for r in first.history] == [0, 1]  # type: ignore[attr-defined]
    assert [r.epoch for r in more.history] == [0, 1, 2]  # type: ignore[attr-defined]
    assert more.history[1] == first.history[1]  # type: ignore[attr-defined]
