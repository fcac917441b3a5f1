"""Fine-tuning a model with an upsampling: the layers it is imported as (speccert.importers.lowering, marked
`fixed`) are the file's constants, never trained, rescaled or widened."""

from __future__ import annotations

import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

import speccert
from speccert.ir import ConvTranspose, Linear
from tests.test_resize import _classifier, _resize


@pytest.mark.parametrize("recipe", ["lmt-rescale", "aol-lmt"])
def test_finetune_never_trains_a_resampling(tmp_path: Path, recipe: str) -> None:
    """The layers an upsampling becomes are the file's constants (`fixed`): fine-tuning (plain and with
    every hidden Linear trained as AOL(V)) leaves them bitwise as imported and trains the others."""
    from speccert.training.finetune import finetune
    from speccert.training.targets import Measurement
    from speccert.training.toy import separable_data

    src = _classifier(
        tmp_path / "m.onnx", _resize(mode="nearest"), {"scales": np.array([1, 1, 2, 2], np.float32)}
    )
    # a bilinear one too, behind the nearest one
    model = onnx.load(str(src))
    model.graph.node[2].output[0] = "u0"
    model.graph.node.insert(
        3, helper.make_node("Resize", ["u0", "", "scales"], ["u"], name="bi", mode="linear")
    )
    model.graph.node[4].input[0] = "u"
    w3 = numpy_helper.to_array([i for i in model.graph.initializer if i.name == "w3"][0])
    for init in model.graph.initializer:
        if init.name == "w3":  # the head reads a 4x larger map now
            init.CopyFrom(numpy_helper.from_array(np.repeat(w3, 4, axis=1) / 2, "w3"))
    path = tmp_path / "m2.onnx"
    onnx.save(model, str(path))
    g0 = speccert.load(str(path))
    fixed0 = {n.name: n.op.weight.clone() for n in g0.nodes if getattr(n.op, "fixed", False)}
    assert len(fixed0) == 3  # the ones kernel and the bilinear pair
    res = finetune(
        str(path),
        separable_data(40, (2, 4, 4), seed=1),
        separable_data(20, (2, 4, 4), seed=2),
        targets=["cra@0.1>=0.99"],
        recipe=recipe,
        epochs=1,
        batch_size=20,
        out=tmp_path / "out.onnx",
        evaluator=lambda graph: Measurement(0.0, {0.1: 0.0}, 1.0),
    )
    g1 = speccert.load(str(res.output))
    after = [n for n in g1.nodes if isinstance(n.op, (ConvTranspose, Linear))]
    before = [n for n in g0.nodes if isinstance(n.op, (ConvTranspose, Linear))]
    assert len(after) == len(before)
    for b, a in zip(before, after, strict=True):
        same = torch.equal(b.op.weight, a.op.weight)
        assert same == (b.name in fixed0), f"{b.name}: trained {not same}, fixed {b.name in fixed0}"


def test_initial_rescale_passes_over_a_resampling() -> None:
    """lmt-rescale's uniform plan spreads the factor over the learned layers only: an upsampling's fixed
    layers keep their weights and pass the scale on, and the logits are exactly f times the original."""
    from speccert.training.rescale import rescale_logits

    g = speccert.load(
        str(
            _classifier(
                Path(tempfile.mkdtemp()) / "m.onnx",
                _resize(mode="linear"),
                {"scales": np.array([1, 1, 2, 2], np.float32)},
            )
        )
    )
    g = g.to("cpu", torch.float64)
    x = torch.rand(6, 2, 4, 4, dtype=torch.float64)
    before = g.forward(x)
    fixed = {n.name: n.op.weight.clone() for n in g.nodes if getattr(n.op, "fixed", False)}
    assert rescale_logits(g, 0.25) == "uniform"
    torch.testing.assert_close(g.forward(x), 0.25 * before, rtol=1e-12, atol=1e-12)
    for n in g.nodes:
        if n.name in fixed:
            assert torch.equal(n.op.weight, fixed[n.name])


def test_widen_refuses_a_resampling_between_layers() -> None:
    """`finetune --widen` adds channels; a 1-d interpolation matrix (a Linear on the spatial axis) is not a
    layer with channels to grow: refused by name, not widened as if it were one."""
    from speccert.errors import UsageError
    from speccert.importers.lowering import interpolation_matrix
    from speccert.ir import INPUT, Activation, Conv, Graph, Node, Reshape
    from speccert.training.widen import widen

    gen = torch.Generator().manual_seed(0)
    a = interpolation_matrix(4, [(Fraction(2 * i + 1, 4) - Fraction(1, 2)) for i in range(8)])
    nodes = [
        Node("c1", Conv(torch.randn(3, 2, 3, generator=gen), None, (1,), ((1, 1),), (1,)), (INPUT,)),
        Node("r1", Activation("relu"), ("c1",)),
        Node("up", Linear(a, fixed=True), ("r1",)),
        Node("c2", Conv(torch.randn(3, 3, 3, generator=gen), None, (1,), ((1, 1),), (1,)), ("up",)),
        Node("r2", Activation("relu"), ("c2",)),
        Node("flat", Reshape((24,)), ("r2",)),
        Node("fc", Linear(torch.randn(3, 24, generator=gen)), ("flat",)),
    ]
    g = Graph((2, 4), nodes)
    with pytest.raises(
        UsageError, match=r"node 'up' \(Linear 4->8 fixed\) between 'c1' and the next layer cannot be widened"
    ):
        widen(g, 2.0)


def upsampling_net() -> torch.nn.Module:
    """A 'module:factory' model with an nn.Upsample between two convolutions."""
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, stride=2), nn.ReLU(), nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3),
    )  # fmt: skip


def test_factory_with_an_upsampling_fine_tunes_to_the_same_keys(tmp_path: Path) -> None:
    """The upsampling's kernel of ones is the importer's, in no state_dict: it is not a weight to map
    back to a key (before: 'cannot map the model's parameter 'upsample_nearest2d.weight' back to a key')."""
    from speccert.training.finetune import finetune
    from speccert.training.targets import Measurement
    from speccert.training.toy import separable_data

    w = tmp_path / "w.pt"
    torch.save(upsampling_net().state_dict(), w)
    res = finetune(
        "tests.test_finetune_resample:upsampling_net",
        separable_data(40, (2, 4, 4), seed=1),
        separable_data(20, (2, 4, 4), seed=2),
        targets=["cra@0.1>=0.99"],
        penalty="lmt",
        epochs=1,
        batch_size=20,
        out=tmp_path / "out.pt",
        weights=w,
        input_shape=(2, 4, 4),
        evaluator=lambda graph: Measurement(0.0, {0.1: 0.0}, 1.0),
    )
    sd0 = torch.load(w, weights_only=True)
    sd1 = torch.load(res.output, weights_only=True)
    assert list(sd0) == list(sd1)
    assert all(not torch.equal(sd0[k], sd1[k]) for k in sd0)  # every weight of the model trained
    net = upsampling_net()
    net.load_state_dict(sd1)
    g = speccert.load("tests.test_finetune_resample:upsampling_net", (2, 4, 4), weights=res.output)
    x = torch.rand(5, 2, 4, 4)
    torch.testing.assert_close(net(x), g(x))
