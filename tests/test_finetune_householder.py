"""--activation householder: ReLU -> a HouseHolder activation with a learned angle per channel pair,
started as MaxMin (theta = 5 pi / 2); the angles train, the ONNX file holds them and reads back as the
same function, the initial rescale stays uniform and exact; refusals name what is wrong."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_finetune_maxmin import mlp as net  # two ReLUs over 8 channels, one over 5 (kept)

import speccert
from speccert.bounds import lipschitz_bound
from speccert.cli.app import main
from speccert.errors import UsageError
from speccert.exporters.onnx_export import save_onnx
from speccert.importers.torch_import import from_module
from speccert.ir.ops import Activation, Householder, Sort
from speccert.training.finetune import finetune
from speccert.training.maxmin import MAXMIN_ANGLE, relu_to_maxmin
from speccert.training.rescale import rescale_logits
from speccert.training.toy import separable_data

TRAIN = separable_data(60, (6,), seed=1)
VAL = separable_data(40, (6,), seed=2)


def _reference(z: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """z -> z - 2 max(0, v.z) v per pair (z_i, z_{i+C/2}), v = (sin(theta/2), -cos(theta/2)): written
    from the formula, independently of the IR's sin/cos branches."""
    x, y = z.chunk(2, dim=1)
    v1, v2 = torch.sin(theta / 2), -torch.cos(theta / 2)
    s = (x * v1 + y * v2).clamp_min(0)
    return torch.cat([x - 2 * s * v1, y - 2 * s * v2], dim=1)


def test_the_rewrite_starts_as_maxmin_and_is_the_householder_formula() -> None:
    g = from_module(net(), (6,))
    mm, hh = relu_to_maxmin(g).graph, relu_to_maxmin(g, "householder").graph
    ops = [n.op for n in hh.nodes]
    assert sum(isinstance(o, Householder) for o in ops) == 2 and not any(isinstance(o, Sort) for o in ops)
    assert sum(isinstance(o, Activation) and o.fn == "relu" for o in ops) == 1  # the odd width stays
    for op in ops:
        if isinstance(op, Householder):
            assert op.theta.shape == (4,) and torch.allclose(op.theta, torch.full((4,), 2.5 * math.pi))
    x = torch.rand(200, 6, dtype=g.dtype) * 4 - 2
    assert torch.allclose(hh(x), mm(x), rtol=1e-5, atol=1e-5)  # MaxMin, up to sin/cos rounding
    theta = torch.tensor([0.3, -1.2, 2.0, MAXMIN_ANGLE], dtype=torch.float64)
    z = torch.randn(50, 8, dtype=torch.float64)
    assert torch.allclose(Householder(theta).forward(z), _reference(z, theta), atol=1e-12)


def test_the_angles_train_and_the_onnx_file_holds_them(tmp_path: Path) -> None:
    src = save_onnx(from_module(net(), (6,)), tmp_path / "in.onnx")
    out = tmp_path / "o.onnx"
    res = finetune(
        str(src), TRAIN, VAL, ["cra@0.05>=0.99"], recipe="lmt-rescale", epochs=2, lr=0.05, batch_size=20,
        out=out, allow_activation_change=True, activation="householder", audit=10,
    )  # fmt: skip
    assert any("HouseHolder" in n for n in res.notes)
    written = speccert.load(str(out))
    thetas = [n.op.theta for n in written.nodes if isinstance(n.op, Householder)]
    assert len(thetas) == 2
    assert any(not torch.allclose(t.double(), torch.full_like(t.double(), MAXMIN_ANGLE)) for t in thetas)
    trained = [n.op.theta for n in res.graph.nodes if isinstance(n.op, Householder)]
    for t, u in zip(thetas, trained, strict=True):
        assert torch.equal(t.float(), u.detach().float())
    x = torch.rand(30, 6)
    assert torch.allclose(written(x), res.graph(x.to(res.graph.dtype)).float(), atol=1e-5)
    assert res.report is not None and res.report.audit is not None and res.report.audit.successes == 0
    assert lipschitz_bound(written).upper == pytest.approx(res.report.lipschitz_upper, rel=1e-9)


def test_the_initial_rescale_is_uniform_and_keeps_the_predictions() -> None:
    g = relu_to_maxmin(from_module(net(), (6,)), "householder").graph
    x = torch.rand(40, 6, dtype=g.dtype)
    before = g(x).detach().clone()
    assert rescale_logits(g, 0.01) == "uniform"  # Householder(c z) = c Householder(z) for c > 0
    assert torch.allclose(g(x), 0.01 * before, rtol=1e-4, atol=1e-6)


def test_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.savez(tmp_path / "d.npz", x=TRAIN[0].numpy(), y=TRAIN[1].numpy())
    src = save_onnx(from_module(net(), (6,)), tmp_path / "in.onnx")
    args = ["finetune", str(src), "--data", str(tmp_path / "d.npz"), "--target", "clean>=0.5"]
    args += ["--out", str(tmp_path / "o.onnx")]
    assert main([*args, "--activation", "householder"]) == 2
    assert "needs --allow-activation-change" in capsys.readouterr().err
    assert main([*args, "--activation", "groupsort9", "--allow-activation-change"]) == 2
    assert "choose one of maxmin, householder" in capsys.readouterr().err
    ep = torch.export.export(net(), (torch.rand(2, 6),))
    torch.export.save(ep, tmp_path / "m.pt2")
    with pytest.raises(UsageError, match="ONNX only"):
        finetune(
            str(tmp_path / "m.pt2"), TRAIN, VAL, ["clean>=0.5"], epochs=1, out=tmp_path / "o.pt2",
            allow_activation_change=True, activation="householder",
        )  # fmt: skip
