"""GroupNorm as torch's ONNX exporter writes it (Reshape, InstanceNormalization, Reshape, Mul, Add):
imported (it was refused), the same function as onnxruntime's, and a bound above every Jacobian norm
autograd finds on the torch module."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

import speccert
from speccert.bounds import lipschitz_bound


def test_torch_groupnorm_through_onnx(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)
    )
    with torch.no_grad():
        m[1].weight.uniform_(0.5, 1.5)
        m[1].bias.normal_(0, 0.2)
    m = m.eval()
    path = tmp_path / "gn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            m,
            (torch.rand(1, 1, 4, 4),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            dynamic_axes={"x": {0: "n"}},
        )
    assert "InstanceNormalization" in {n.op_type for n in onnx.load(str(path)).graph.node}
    g = speccert.load(str(path))
    x = torch.rand(8, 1, 4, 4)
    (want,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    np.testing.assert_allclose(g.forward(x.to(g.dtype)).detach().double().numpy(), want, rtol=1e-4, atol=1e-4)
    upper = lipschitz_bound(g).upper
    m64 = m.double()
    for xi in x.double():
        j = torch.autograd.functional.jacobian(lambda z: m64(z.unsqueeze(0))[0], xi).reshape(3, -1)
        assert float(torch.linalg.matrix_norm(j, ord=2)) <= upper
