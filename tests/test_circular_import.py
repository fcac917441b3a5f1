"""Circular padding through ONNX (issue 15, orthogonium's default padding): the legacy exporter's
Concat-of-Slices and a Pad of mode 'wrap' before a Conv import as one circular Conv, whose bound is the
circular convolution's norm (dense SVD here), not the sqrt(3)-per-axis of the Concat rule."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

import speccert
from speccert.bounds import lipschitz_bound
from speccert.importers.onnx_ops.examples import model


def _dense_norm(f, shape: tuple[int, ...]) -> float:  # noqa: ANN001
    n = math.prod(shape)
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    with torch.no_grad():
        cols = f(eye) - f(torch.zeros(1, *shape, dtype=torch.float64))
    return float(torch.linalg.matrix_norm(cols.reshape(n, -1).T, ord=2))


def _conv() -> torch.nn.Conv2d:
    torch.manual_seed(0)
    return torch.nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular").eval()


def _check(path: Path, conv: torch.nn.Conv2d) -> None:
    g = speccert.load(path)  # checked against onnxruntime at load
    assert [n.op_type for n in g.nodes] == ["Conv"]
    assert g.nodes[0].op.padding_mode == "circular"
    truth = _dense_norm(conv.double(), (2, 6, 6))
    upper = lipschitz_bound(g, method="exact").upper
    assert truth <= upper <= truth * (1 + 1e-9)


def test_legacy_export_of_a_circular_conv_is_one_circular_conv(tmp_path: Path) -> None:
    conv = _conv()
    path = tmp_path / "c.onnx"
    torch.onnx.export(conv, (torch.randn(1, 2, 6, 6),), str(path), dynamo=False, opset_version=17)
    assert "Concat" in {n.op_type for n in onnx.load(str(path)).graph.node}
    _check(path, conv)


def test_wrap_pad_then_conv_is_one_circular_conv(tmp_path: Path) -> None:
    conv = _conv()
    pads = np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)
    nodes = [
        helper.make_node("Pad", ["x", "p"], ["xp"], mode="wrap"),
        helper.make_node("Conv", ["xp", "w", "b"], ["y"]),
    ]
    inits = {"p": pads, "w": conv.weight.detach().numpy(), "b": conv.bias.detach().numpy()}
    path = tmp_path / "w.onnx"
    onnx.save(model(nodes, (2, 6, 6), inits, 19), str(path))
    _check(path, conv)


def test_wrap_without_a_conv_stays_a_sound_concat(tmp_path: Path) -> None:
    nodes = [helper.make_node("Pad", ["x", "p"], ["y"], mode="wrap")]
    path = tmp_path / "p.onnx"
    onnx.save(model(nodes, (1, 3, 3), {"p": np.array([0, 0, 1, 0, 0, 0, 1, 0], np.int64)}, 19), str(path))
    g = speccert.load(path)
    # rows 2, 0, 1, 2: row 2 appears twice, so the exact norm is sqrt(2)
    truth = _dense_norm(lambda z: g.to("cpu", torch.float64).forward(z), (1, 3, 3))
    assert truth == pytest.approx(math.sqrt(2), rel=1e-12)
    assert lipschitz_bound(g, method="exact").upper >= truth
