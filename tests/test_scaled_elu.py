"""SELU and CELU (ONNX Selu / Celu, torch's aten.selu / aten.celu / aten.elu with scales): imported as
post * elu(pre * x; alpha) with float64 Affines, so the certifier's slope bound is the activation's own
sup |f'| (SELU: scale * alpha = 1.75810; CELU: 1) and CELU keeps its curvature 1/alpha.

Ground truth: the closed forms, and slopes read by autograd from the torch module on a dense grid."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import speccert
from speccert.bounds import lipschitz_bound

ALPHA, SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


def _f32(v: float) -> float:
    """An ONNX float attribute's value: the file holds float32 (and the certified function is the file's)."""
    return float(np.float32(v))


def _write(act: nn.Module, route: str, folder: Path) -> str:
    """Linear(1 -> 1, weight 1), act, Linear(1 -> 2, rows [1], [0]): its Lipschitz constant is act's."""
    m = nn.Sequential(nn.Linear(1, 1), act, nn.Linear(1, 2)).eval()
    with torch.no_grad():
        m[0].weight.fill_(1.0)
        m[0].bias.zero_()
        m[2].weight.copy_(torch.tensor([[1.0], [0.0]]))
        m[2].bias.zero_()
    if route == "pt2":
        path = folder / "m.pt2"
        dim = torch.export.Dim("batch", min=1)
        torch.export.save(
            torch.export.export(m, (torch.rand(2, 1),), dynamic_shapes={"input": {0: dim}}), path
        )
    else:
        path = folder / "m.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(m, (torch.rand(1, 1),), str(path), dynamo=False, opset_version=17)
    return str(path)


def _sampled_slope(act: nn.Module) -> float:
    x = torch.linspace(-30.0, 30.0, 600001, dtype=torch.float64, requires_grad=True)
    (d,) = torch.autograd.grad(act.double()(x).sum(), x)
    return float(d.abs().max())


@pytest.mark.parametrize("route", ["onnx", "pt2"])
@pytest.mark.parametrize("kind", ["selu", "celu 0.4", "celu 2.5"])
def test_slope_bound_is_the_activations_sup(tmp_path: Path, route: str, kind: str) -> None:
    c = _f32 if route == "onnx" else float  # torch.export keeps torch's double constants
    if kind == "selu":
        make, exact, curvature = nn.SELU, c(SCALE) * c(ALPHA), None
    else:
        alpha = float(kind.split()[1])
        make, exact, curvature = (lambda: nn.CELU(alpha)), 1.0, 1 / c(alpha)
    g = speccert.load(_write(make(), route, tmp_path))
    lb = lipschitz_bound(g)
    assert _sampled_slope(make()) <= lb.upper
    assert lb.upper == pytest.approx(exact, rel=1e-12)  # tight: the bound is the sup itself
    if curvature is None:
        assert lb.curvature is None  # SELU's slope jumps at 0: no second-order certificate
    else:
        assert lb.curvature is not None
        assert lb.curvature[lb.logits] == pytest.approx(curvature, rel=1e-12)


def test_aten_elu_with_scales_matches_torch(tmp_path: Path) -> None:
    """torch's elu(x, alpha, scale, input_scale) with both scales != 1, through torch.export."""

    class ScaledElu(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.aten.elu.default(x, 1.3, 0.8, 2.5)

    g = speccert.load(_write(ScaledElu(), "pt2", tmp_path))
    assert lipschitz_bound(g).upper == pytest.approx(0.8 * max(1.0, 1.3 * 2.5), rel=1e-12)
    x = torch.linspace(-3, 3, 61).reshape(-1, 1)
    want = torch.stack([ScaledElu()(x)[:, 0], torch.zeros(61)], 1)
    torch.testing.assert_close(g.forward(x.to(g.dtype)).float(), want, rtol=1e-6, atol=1e-6)
    assert math.isfinite(lipschitz_bound(g).upper)


def test_celu_with_alpha_zero_is_refused_naming_the_node(tmp_path: Path) -> None:
    """Celu divides by alpha: alpha = 0 (a file onnxruntime would run to NaN / Inf) is refused in one
    line naming the node and the reason, not certified and not a traceback."""
    import onnx

    from speccert.errors import UnsupportedModelError
    from speccert.importers.onnx_ops.examples import one_node

    m = one_node("Celu", (5,), opset=12, alpha=0.0)
    m.graph.node[0].name = "my_celu"
    path = tmp_path / "celu0.onnx"
    onnx.save(m, str(path))
    with pytest.raises(UnsupportedModelError) as info:
        speccert.load(str(path))
    text = str(info.value)
    assert "my_celu" in text and "alpha" in text


def test_celu_with_alpha_zero_cli_says_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The command line: exit 3 and the refusal alone, no numpy "warning:" line from evaluating the node
    (the reference kernel divides by alpha) before it."""
    import onnx

    from speccert.cli.app import main
    from speccert.importers.onnx_ops.examples import one_node

    m = one_node("Celu", (5,), opset=12, alpha=0.0)
    m.graph.node[0].name = "my_celu"
    path = tmp_path / "celu0.onnx"
    onnx.save(m, str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # a warning the code let through would be shown, not deduplicated
        code = main(["norms", str(path)])
    err = capsys.readouterr().err
    assert code == 3
    assert "my_celu" in err and "warning" not in err.lower()
