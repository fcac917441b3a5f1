"""--allow-activation-change: ReLU -> MaxMin over channels (speccert.training.maxmin), exported to
ONNX, re-imported as Sort, certified with the product of the linear norms; without the flag nothing
changes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import speccert
from speccert.bounds import lipschitz_bound
from speccert.errors import UsageError
from speccert.exporters.onnx_export import save_onnx
from speccert.importers.torch_import import from_module
from speccert.ir.ops import Activation, Extremum, Sort
from speccert.training.finetune import finetune
from speccert.training.maxmin import relu_to_maxmin
from speccert.training.targets import Measurement
from speccert.training.toy import separable_data

TRAIN = separable_data(60, (6,), seed=1)
VAL = separable_data(30, (6,), seed=2)


def mlp() -> nn.Module:
    """Two ReLUs over an even width (8) and one over an odd width (5, kept)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3)
    ).eval()


def _maxmin_reference(u: torch.Tensor) -> torch.Tensor:
    """MaxMin of the two channel halves, written independently of the IR: (max(a, b), min(a, b))."""
    a, b = u.chunk(2, dim=1)
    return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)


def _relus(graph: speccert.Graph) -> list[str]:
    return [n.name for n in graph.nodes if isinstance(n.op, Activation) and n.op.fn == "relu"]


def test_rewrite_computes_maxmin_round_trips_through_onnx_and_bounds_by_the_linear_norms(
    tmp_path: Path,
) -> None:
    net = mlp()
    g = from_module(net, (6,))
    change = relu_to_maxmin(g)
    assert len(change.replaced) == 2 and len(change.kept) == 1 and _relus(change.graph) == list(change.kept)
    assert "odd channel count" in change.note()

    lin = [m for m in net if isinstance(m, nn.Linear)]
    x = torch.randn(64, 6)
    h = _maxmin_reference(lin[0](x))
    h = _maxmin_reference(lin[1](h))
    want = lin[3](torch.relu(lin[2](h)))
    torch.testing.assert_close(change.graph(x), want)

    path = save_onnx(change.graph, tmp_path / "maxmin.onnx")
    back = speccert.load(str(path))
    assert sum(isinstance(n.op, Sort) for n in back.nodes) == 2
    assert not any(isinstance(n.op, Extremum) for n in back.nodes)  # read back as Sort, not max/min pairs
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (ort_y,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(ort_y, want.detach().numpy(), rtol=1e-5, atol=1e-5)

    # Sort and ReLU have factor 1: the bound is the product of the dense spectral norms.
    product = math.prod(float(torch.linalg.matrix_norm(m.weight.detach().double(), ord=2)) for m in lin)
    upper = lipschitz_bound(back).upper
    assert product <= upper <= product * 1.01


def test_rewrite_keeps_an_odd_channel_relu_and_a_net_without_relu_unchanged() -> None:
    torch.manual_seed(0)
    g = from_module(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval(), (4,))
    change = relu_to_maxmin(g)
    assert change.replaced == () and change.graph is g and len(change.kept) == 1


def _never(graph: speccert.Graph) -> Measurement:
    return Measurement(0.0, {0.1: 0.0}, 1.0)


def _finetune(src: Path, out: Path, allow: bool) -> speccert.Graph:
    res = finetune(
        str(src),
        TRAIN,
        VAL,
        targets=["cra@0.1>=0.9"],
        penalty="lmt",
        epochs=1,
        batch_size=20,
        out=out,
        evaluator=_never,
        allow_activation_change=allow,
    )
    assert any("--allow-activation-change" in n for n in res.notes) == allow
    return speccert.load(str(out))


def test_finetune_changes_activations_only_with_the_flag(tmp_path: Path) -> None:
    src = save_onnx(from_module(mlp(), (6,)), tmp_path / "in.onnx")
    plain = _finetune(src, tmp_path / "plain.onnx", allow=False)
    assert len(_relus(plain)) == 3 and not any(isinstance(n.op, Sort) for n in plain.nodes)
    changed = _finetune(src, tmp_path / "maxmin.onnx", allow=True)
    assert len(_relus(changed)) == 1 and sum(isinstance(n.op, Sort) for n in changed.nodes) == 2


def test_flag_refuses_a_state_dict_output(tmp_path: Path) -> None:
    w = tmp_path / "w.pt"
    torch.save(mlp().state_dict(), w)
    with pytest.raises(UsageError, match="state_dict"):
        finetune(
            "test_finetune_maxmin:mlp",
            TRAIN,
            VAL,
            penalty="lmt",
            epochs=1,
            out=tmp_path / "o.pt",
            weights=w,
            input_shape=(6,),
            evaluator=_never,
            allow_activation_change=True,
        )


def test_cli_flag_writes_maxmin_and_the_file_certifies_with_audit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from speccert.cli.app import main

    np.savez(tmp_path / "d.npz", x=TRAIN[0].numpy(), y=TRAIN[1].numpy())
    src = save_onnx(from_module(mlp(), (6,)), tmp_path / "in.onnx")
    out = tmp_path / "o.onnx"
    args = ["finetune", str(src), "--data", str(tmp_path / "d.npz"), "--out", str(out)]
    code = main([*args, "--target", "lipschitz<=1e6", "--epochs", "1", "--allow-activation-change"])
    assert code == 0
    assert "kept as ReLU" in capsys.readouterr().err
    assert sum(isinstance(n.op, Sort) for n in speccert.load(str(out)).nodes) == 2
    assert main(["certify", str(out), "--data", str(tmp_path / "d.npz"), "--audit", "20"]) == 0


def test_resume_refuses_a_different_activation_choice(tmp_path: Path) -> None:
    src = save_onnx(from_module(mlp(), (6,)), tmp_path / "in.onnx")
    out = tmp_path / "o.onnx"
    _finetune(src, out, allow=True)
    common = dict(targets=["cra@0.1>=0.9"], penalty="lmt", epochs=2, batch_size=20, out=out, evaluator=_never)
    with pytest.raises(UsageError, match="activation_change"):
        finetune(str(src), TRAIN, VAL, resume=True, allow_activation_change=False, **common)
    res = finetune(str(src), TRAIN, VAL, resume=True, allow_activation_change=True, **common)
    assert [r.epoch for r in res.history] == [0, 1, 2]  # the same choice continues the run
