"""Real torchvision / timm architectures (random init, 32x32 inputs) load through the PyTorch and ONNX
routes and match torch, or are refused in one line naming the kind. Skipped without torchvision/timm
(optional test dependencies); benchmarks/architectures.py is the full table (docs/architectures.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from speccert.errors import UnsupportedModelError
from speccert.importers.onnx_import import load_onnx
from speccert.importers.torch_import import from_module, load_torch_file

try:  # also where torchvision's C++ ops cannot load (its PyPI wheel beside torch's CPU build)
    from benchmarks.architectures import import_torchvision

    torchvision = import_torchvision()
except ImportError:
    pytest.skip("torchvision is an optional test dependency", allow_module_level=True)

LOADS = ["mobilenet_v2", "shufflenet_v2_x0_5", "squeezenet1_0"]


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval()


@pytest.mark.parametrize("name", LOADS)
def test_torchvision_model_loads_and_matches(name: str, tmp_path: Path) -> None:
    m = _model(name)
    g = from_module(m, (3, 32, 32))  # checked against the module at load
    x = torch.randn(2, 3, 32, 32)
    p = tmp_path / f"{name}.onnx"
    torch.onnx.export(m, (x,), str(p), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "N"}})
    g2 = load_onnx(p)  # checked against onnxruntime at load
    with torch.no_grad():
        torch.testing.assert_close(g2.forward(x), g.forward(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("route", ["pt2", "onnx-dynamo"])
@pytest.mark.parametrize("name", ["mobilenet_v2", "shufflenet_v2"])
def test_the_other_export_routes_load_and_match(name: str, route: str, tmp_path: Path) -> None:
    from benchmarks.architectures import build, export

    if route == "onnx-dynamo":
        pytest.importorskip("onnxscript", reason="torch's dynamo ONNX exporter needs onnxscript")
    path = tmp_path / f"{name}.{'pt2' if route == 'pt2' else 'onnx'}"
    export(name, route, path)
    g = load_torch_file(path) if route == "pt2" else load_onnx(path)  # checked at load
    m, shape = build(name)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        torch.testing.assert_close(g.forward(x), m(x), rtol=1e-4, atol=1e-4)


def test_efficientnet_is_refused_naming_squeeze_excitation() -> None:
    with pytest.raises(UnsupportedModelError) as info:
        from_module(_model("efficientnet_b0"), (3, 32, 32))
    text = str(info.value)
    assert "squeeze-excitation" in text and len(text) < 1000


def test_vit_is_refused_naming_attention() -> None:
    timm = pytest.importorskip("timm", reason="timm is an optional test dependency")
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32).eval()
    with pytest.raises(UnsupportedModelError) as info:
        from_module(m, (3, 32, 32))
    text = str(info.value)
    assert "attention" in text and len(text) < 1000
