"""Fine-tune run folders after a kill during the first checkpoint write, and resumes with other settings
(issue 17 item 7): no dead end, no stale temp files, and a resume never silently becomes another run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import speccert
from speccert.errors import UsageError
from speccert.exporters.onnx_export import save_onnx
from speccert.training.checkpoint import run_dir_for
from speccert.training.finetune import finetune
from speccert.training.targets import Measurement
from speccert.training.toy import separable_data, toy_mlp

TRAIN = separable_data(60, (6,), seed=1)
VAL = separable_data(20, (6,), seed=2)


def _evaluator(graph: speccert.Graph) -> Measurement:
    with torch.no_grad():
        acc = float((graph(VAL[0].to(graph.dtype)).argmax(1) == VAL[1]).double().mean())
    return Measurement(acc, {0.1: acc / 2}, 1.0)


def _run(model: Path, out: Path, **kw) -> object:  # noqa: ANN003
    args = dict(
        targets=["cra@0.1>=0.99"],
        penalty="spectral",
        epochs=2,
        lr=5e-3,
        batch_size=20,
        seed=3,
        evaluator=_evaluator,
    )
    args.update(kw)
    return finetune(str(model), TRAIN, VAL, out=out, **args)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    p = tmp_path / "in.onnx"
    save_onnx(toy_mlp(dtype=torch.float32), p)
    return p


def _params(path: Path) -> dict[str, torch.Tensor]:
    return dict(speccert.load(str(path)).parameters())


def test_kill_during_first_checkpoint_write_resumes_from_the_start(model: Path, tmp_path: Path) -> None:
    reference = tmp_path / "ref.onnx"
    _run(model, reference)
    # The state a kill inside the first `last.pt` write leaves: best.pt and a temp file, no last.pt.
    out = tmp_path / "out.onnx"
    run = run_dir_for(out)
    run.mkdir()
    shutil.copy(run_dir_for(reference) / "best.pt", run / "best.pt")
    (run / "last.pt.k1ll3d.tmp").write_bytes(b"torn")
    with pytest.raises(UsageError, match=r"interrupted before its first checkpoint.*--resume"):
        _run(model, out)
    _run(model, out, resume=True)
    assert not list(run.glob("*.tmp")), "stale temp files were left behind"
    ref, got = _params(reference), _params(out)
    for k in ref:  # the restarted run is the uninterrupted one (same seed, from step 0)
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0)


def test_resume_refuses_other_settings_naming_them(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    _run(model, out, epochs=1)
    (run_dir_for(out) / "best.pt.x.tmp").write_bytes(b"")
    with pytest.raises(UsageError, match=r"batch_size: 20 in the checkpoint, 10 now.*seed: 3 in the"):
        _run(model, out, resume=True, seed=4, batch_size=10)
    assert not list(run_dir_for(out).glob("*.tmp"))
    other = (TRAIN[0] + 0.5, TRAIN[1])
    with pytest.raises(UsageError, match=r"train_data"):
        finetune(str(model), other, VAL, out=out, resume=True, targets=["cra@0.1>=0.99"], penalty="spectral",
                 epochs=2, lr=5e-3, batch_size=20, seed=3, evaluator=_evaluator)  # fmt: skip
    with pytest.raises(UsageError, match=r"penalty_weight"):
        _run(model, out, resume=True, penalty_weight=0.5)
    _run(model, out, resume=True, epochs=2, lr=1e-3)  # lr and the budget may change: same run
