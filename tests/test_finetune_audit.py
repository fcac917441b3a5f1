"""`finetune(audit=N)` / `speccert finetune --audit N`: the written model's closing certify report also
attacks N certified validation points with PGD-L2 at their certified radius; a success (a wrong
certificate) is an InternalError, exit 5, exactly as in `speccert certify --audit`."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from speccert.cli.app import main
from speccert.errors import UsageError
from speccert.exporters.onnx_export import save_onnx
from speccert.training.finetune import finetune
from speccert.training.targets import Measurement
from speccert.training.toy import separable_data, toy_mlp

# the module (speccert.bounds re-exports its `certify` function under the same name)
certify_module = importlib.import_module("speccert.bounds.certify")
TRAIN = separable_data(60, (6,), seed=1)
VAL = separable_data(40, (6,), seed=2)


def _files(tmp_path: Path) -> tuple[Path, Path, Path]:
    np.savez(tmp_path / "d.npz", x=TRAIN[0].numpy(), y=TRAIN[1].numpy())
    np.savez(tmp_path / "v.npz", x=VAL[0].numpy(), y=VAL[1].numpy())
    save_onnx(toy_mlp(dtype=torch.float32), tmp_path / "m.onnx")
    return tmp_path / "m.onnx", tmp_path / "d.npz", tmp_path / "v.npz"


def _argv(tmp_path: Path, *extra: str) -> list[str]:
    model, data, val = _files(tmp_path)
    return [
        "finetune", str(model), "--data", str(data), "--val", str(val), "--target", "cra@0.05>=0.99",
        "--penalty", "lmt", "--epochs", "2", "--lr", "0.01", "--batch-size", "20",
        "--out", str(tmp_path / "o.onnx"), *extra,
    ]  # fmt: skip


def test_the_closing_report_audits_the_written_file_and_keeps_the_epoch_figures(tmp_path: Path) -> None:
    model, data, val = _files(tmp_path)
    res = finetune(
        str(model), str(data), str(val), ["cra@0.05>=0.99"], penalty="lmt", epochs=2, lr=0.01,
        batch_size=20, out=tmp_path / "o.onnx", audit=15,
    )  # fmt: skip
    rep = res.report
    assert rep is not None and rep.audit is not None
    certified = int(np.count_nonzero((rep.radius > 0) & np.isfinite(rep.radius)))
    assert certified > 0
    assert rep.audit.points == min(15, certified) and rep.audit.successes == 0
    assert rep.audit.steps == 40 and rep.audit.restarts == 4  # certify's own attack settings
    best = next(r for r in res.history if r.epoch == res.best_epoch)  # the audit changes no figure
    assert rep.clean_accuracy == pytest.approx(best.clean)
    assert rep.certified_accuracy(0.05) == pytest.approx(best.cra[0.05])
    assert rep.lipschitz_upper == pytest.approx(best.lipschitz, rel=1e-6)
    plain = finetune(
        str(model), str(data), str(val), ["cra@0.05>=0.99"], penalty="lmt", epochs=2, lr=0.01,
        batch_size=20, out=tmp_path / "p.onnx",
    )  # fmt: skip
    assert plain.report is not None and plain.report.audit is None  # off by default


def test_cli_prints_the_audit_and_records_it_in_the_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(_argv(tmp_path, "--audit", "10", "--json", str(tmp_path / "r.json")))
    out = capsys.readouterr().out
    assert code == 1, out  # the target is out of reach on purpose: the run ends at its budget
    audit = json.loads((tmp_path / "r.json").read_text())["report"]["audit"]
    assert audit["successes"] == 0 and 0 < audit["points"] <= 10
    assert f"on {audit['points']} certified points: 0 successes" in out


def test_a_wrong_certificate_is_caught_exit_5(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Radii inflated 1000x (an unsound certifier): the audit of the written file finds the attack."""
    real = certify_module.certify_samples

    def inflated(*args: object, **kwargs: object):  # noqa: ANN202
        s = real(*args, **kwargs)  # type: ignore[arg-type]
        s.per_kind = {k: v * 1000.0 for k, v in s.per_kind.items()}
        return s

    monkeypatch.setattr(certify_module, "certify_samples", inflated)
    code = main(_argv(tmp_path, "--audit", "10"))
    err = capsys.readouterr().err
    assert code == 5, err
    assert "audit: PGD found an adversarial example" in err
    (tmp_path / "b").mkdir()
    assert main(_argv(tmp_path / "b")) in (0, 1)  # not audited: the wrong radii pass unnoticed


def test_bad_audit_values_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_argv(tmp_path, "--audit", "-1")) == 2
    assert "--audit must be >= 0" in capsys.readouterr().err
    with pytest.raises(UsageError, match="injected evaluator"):
        finetune(
            toy_mlp(), TRAIN, VAL, ["cra@0.05>=0.99"], epochs=1, audit=5,
            evaluator=lambda g: Measurement(0.0, {0.05: 0.0}, 1.0),
        )  # fmt: skip
