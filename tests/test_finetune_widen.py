"""`finetune --widen F` (speccert.training.widen): every hidden layer gets F times the units and the
widened network computes the input's function (new units start with zero outgoing weights); training
moves the new units; the written file is the wider network, read back and certified like any other;
graphs it cannot widen keeping the function, a state_dict output and bad factors are refused by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import speccert
from speccert.errors import UsageError
from speccert.exporters.onnx_export import save_onnx
from speccert.importers.torch_import import from_module
from speccert.ir.ops import Conv, Linear
from speccert.training.finetune import finetune
from speccert.training.records import FinetuneResult
from speccert.training.run_setup import load_graph
from speccert.training.targets import Measurement
from speccert.training.toy import separable_data, toy_cnn, toy_mlp
from speccert.training.widen import widen

ROOT = Path(__file__).resolve().parents[1]
CNN = ROOT / "models" / "cnn.onnx"
TRAIN = separable_data(40, (1, 8, 8), seed=1)
VAL = separable_data(12, (1, 8, 8), seed=2)


def _widths(graph: speccert.Graph) -> list[tuple[int, int]]:
    """(inputs, outputs) of every Conv / Linear, in order."""
    out = []
    for n in graph.nodes:
        if isinstance(n.op, Conv):
            out.append((n.op.weight.shape[1] * n.op.groups, n.op.weight.shape[0]))
        elif isinstance(n.op, Linear):
            out.append((n.op.weight.shape[1], n.op.weight.shape[0]))
    return out


def test_zoo_cnn_widened_twice_computes_the_same_function_in_float64() -> None:
    g, _ = load_graph(str(CNN), None, None)
    w = widen(g.to("cpu", torch.float64), 2.0, seed=3)
    assert _widths(w.graph) == [(1, 32), (32, 64), (3136, 200), (200, 10)]
    assert [(a, b) for _, a, b in w.widths] == [(16, 32), (32, 64), (100, 200)]
    assert "16->32" in w.note() and "--widen 2" in w.note()
    x = torch.rand(200, 1, 28, 28, dtype=torch.float64)
    want = g.to("cpu", torch.float64).forward(x)
    torch.testing.assert_close(w.graph.forward(x), want, rtol=1e-12, atol=1e-12)
    # old units read the old channels with the old weights and the new channels with zeros; new units
    # read everything with non-zero weights
    conv2 = [n.op for n in w.graph.nodes if isinstance(n.op, Conv)][1].weight
    old = g.to("cpu", torch.float64).nodes[3].op.weight
    assert torch.equal(conv2[:32, :16], old) and float(conv2[:32, 16:].abs().max()) == 0.0
    assert bool((conv2[32:].abs().sum(dim=(1, 2, 3)) > 0).all())


@pytest.mark.parametrize("factor", [1.5, 3.0])
def test_toy_cnn_and_mlp_keep_their_function_at_other_factors(factor: float) -> None:
    for g in (toy_cnn(bn=False), toy_mlp(hidden=6)):
        w = widen(g, factor)
        x = torch.rand(50, *g.input_shape, dtype=torch.float64)
        torch.testing.assert_close(w.graph.forward(x), g.forward(x), rtol=1e-12, atol=1e-12)
        assert all(b == round(a * factor) for _, a, b in w.widths)
    g = toy_mlp()
    off = widen(g, 1.0)
    assert off.graph is g and off.widths == ()


def test_refused_graphs_name_the_node() -> None:
    with pytest.raises(UsageError, match="BatchNorm|bn"):
        widen(toy_cnn(bn=True), 2.0)

    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.a(x))
            return self.c(h + self.b(h))

    with pytest.raises(UsageError, match="only chains|cannot be widened"):
        widen(from_module(Res().eval(), (4,)), 2.0)
    for bad in (0.5, float("nan"), float("inf"), -2.0):
        with pytest.raises(UsageError, match="--widen"):
            widen(toy_mlp(), bad)


def _never(graph: speccert.Graph) -> Measurement:
    return Measurement(0.0, {0.1: 0.0}, 1.0)


def _widened(src: Path, out: Path, **kw: Any) -> FinetuneResult:
    """One epoch of lmt on the toy data, widened (2 unless given), the stopping rule never met."""
    opts: dict[str, Any] = dict(
        targets=["cra@0.1>=0.9"], penalty="lmt", epochs=1, batch_size=10, evaluator=_never
    )
    return finetune(str(src), TRAIN, VAL, out=out, **(opts | {"widen": 2.0} | kw))


def test_finetune_trains_the_new_units_and_writes_the_wider_file(tmp_path: Path) -> None:
    src = save_onnx(toy_cnn(bn=False, dtype=torch.float32), tmp_path / "in.onnx")
    out = tmp_path / "wide.onnx"
    res = _widened(src, out)
    assert any("--widen 2" in n for n in res.notes)
    back = speccert.load(str(out))
    assert _widths(back) == [(1, 8), (8, 8), (128, 16), (16, 3)]
    convs = [n.op for n in back.nodes if isinstance(n.op, Conv)]
    assert float(convs[1].weight[:, 4:].abs().max()) > 0  # the zero columns moved: the new units learn
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = VAL[0][:8].numpy()
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x})
    np.testing.assert_allclose(y, back.forward(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_state_dict_output_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    w = tmp_path / "w.pt"
    torch.save(net.state_dict(), w)
    with pytest.raises(UsageError, match="state_dict"):
        finetune(
            "test_finetune_widen:_mlp",
            separable_data(20, (6,)),
            separable_data(10, (6,), seed=2),
            penalty="lmt",
            epochs=1,
            out=tmp_path / "o.pt",
            weights=w,
            input_shape=(6,),
            evaluator=_never,
            widen=2.0,
        )


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize("value", ["0.5", "nan", "[red]2"])
def test_cli_bad_widen_is_one_line_exit_2(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from speccert.cli.app import main

    argv = ["finetune", str(CNN), "--data", str(ROOT / "models" / "data" / "fashion_mnist_train_2k.npz")]
    argv += ["--target", "clean>=0.5", "--out", str(tmp_path / "o.onnx"), "--widen", value]
    assert main(argv) == 2
    text = capsys.readouterr()
    lines = [ln for ln in (text.out + text.err).splitlines() if ln.strip()]
    assert "Traceback" not in text.err and "--widen" in (text.out + text.err)
    assert not (tmp_path / "o.onnx").exists()
    if value != "[red]2":  # typer's own parse error for a non-number is a boxed message
        assert len(lines) == 1


def test_cli_widen_writes_json_and_the_file_certifies_with_audit(tmp_path: Path) -> None:
    import json

    from speccert.cli.app import main

    np.savez(tmp_path / "d.npz", x=TRAIN[0].numpy(), y=TRAIN[1].numpy())
    src = save_onnx(toy_cnn(bn=False, dtype=torch.float32), tmp_path / "in.onnx")
    out, js = tmp_path / "o.onnx", tmp_path / "r.json"
    argv = ["finetune", str(src), "--data", str(tmp_path / "d.npz"), "--out", str(out), "--json", str(js)]
    assert main([*argv, "--target", "lipschitz<=1e9", "--epochs", "1", "--widen", "1.5"]) == 0
    widened = json.loads(js.read_text())["finetune"]["widened"]
    assert [(d["from"], d["to"]) for d in widened] == [(4, 6), (4, 6), (8, 12)]
    assert _widths(speccert.load(str(out))) == [(1, 6), (6, 6), (96, 12), (12, 3)]
    assert main(["certify", str(out), "--data", str(tmp_path / "d.npz"), "--audit", "20"]) == 0


def test_resume_continues_a_widened_run_and_refuses_another_width(tmp_path: Path) -> None:
    src = save_onnx(toy_cnn(bn=False, dtype=torch.float32), tmp_path / "in.onnx")
    out = tmp_path / "o.onnx"
    _widened(src, out)
    for other in (1.0, 3.0):
        with pytest.raises(UsageError, match="widen"):
            _widened(src, out, epochs=2, resume=True, widen=other)
    res = _widened(src, out, epochs=2, resume=True)
    assert [r.epoch for r in res.history] == [0, 1, 2]  # the same width continues the run
    assert _widths(speccert.load(str(out)))[0] == (1, 8)


def test_pt2_input_writes_a_wider_pt2_that_reads_back(tmp_path: Path) -> None:
    from speccert.importers.torch_import import save_pt2

    src = save_pt2(toy_cnn(bn=False, dtype=torch.float32), tmp_path / "in.pt2")
    out = tmp_path / "o.pt2"
    _widened(src, out)
    back = speccert.load(str(out))
    assert _widths(back) == [(1, 8), (8, 8), (128, 16), (16, 3)]


def test_a_softmax_output_is_not_a_hidden_layer() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3), nn.Softmax(dim=1)).double().eval()
    g = from_module(net, (6,)).to("cpu", torch.float64)
    w = widen(g, 2.0)
    assert [(a, b) for _, a, b in w.widths] == [(8, 16)]
    x = torch.rand(20, 6, dtype=torch.float64)
    torch.testing.assert_close(w.graph.forward(x), g.forward(x), rtol=1e-12, atol=1e-12)


def test_pooling_between_layers_keeps_the_function() -> None:
    """Max / average pooling and a global average pool act per channel: the new channels pool alone."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3),
        nn.Tanh(),
        nn.AvgPool2d(2, 1),
        nn.Conv2d(6, 4, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()
    g = from_module(net, (1, 10, 10)).to("cpu", torch.float64)
    w = widen(g, 2.0)
    assert [(a, b) for _, a, b in w.widths] == [(4, 8), (6, 12), (4, 8)]
    x = torch.rand(20, 1, 10, 10, dtype=torch.float64)
    torch.testing.assert_close(w.graph.forward(x), g.forward(x), rtol=1e-12, atol=1e-12)
