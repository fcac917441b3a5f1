"""The ONNX import frees the parsed file's weights and runs onnxruntime on the file itself: the
faithfulness check still catches (and localises) a wrong conversion, and constants keep their values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from speccert.errors import InternalError
from speccert.importers.onnx_import import load_onnx
from speccert.importers.onnx_model import without_weights
from speccert.importers.onnx_ops import linear
from speccert.importers.onnx_ops.examples import model, randn
from speccert.ir.ops import Linear


def _mlp(tmp_path, shared: bool = False, **save: object):  # noqa: ANN202
    """x -> Gemm(w1) -> Relu -> Gemm(w2 or w1 again) -> y; `shared` makes both Gemms read w1."""
    w1, b1, w2 = randn(6, 6, seed=1), randn(6, seed=2), randn(6, 6, seed=3)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "w1" if shared else "w2"], ["y"], name="fc2", transB=1),
    ]
    path = tmp_path / "mlp.onnx"
    onnx.save(model(nodes, (6,), {"w1": w1, "b1": b1, "w2": w2}, opset=13), path, **save)  # type: ignore[arg-type]
    return path, w1, b1, w2


@pytest.mark.parametrize("shared", [False, True])
def test_constants_keep_their_exact_values(tmp_path, shared: bool) -> None:
    path, w1, b1, w2 = _mlp(tmp_path, shared)
    g = load_onnx(path)  # the check against onnxruntime (run on the file) passes
    fcs = [n.op for n in g.nodes if isinstance(n.op, Linear)]
    assert torch.equal(fcs[0].weight, torch.from_numpy(w1))
    assert fcs[0].bias is not None and torch.equal(fcs[0].bias, torch.from_numpy(b1))
    assert torch.equal(fcs[1].weight, torch.from_numpy(w1 if shared else w2))
    # tied weights stay separate tensors: training updates one op's weights in place
    assert fcs[0].weight.data_ptr() != fcs[1].weight.data_ptr()


def test_without_weights_keeps_the_structure(tmp_path) -> None:
    path, *_ = _mlp(tmp_path)
    m = onnx.load(str(path))
    light, nodes = without_weights(m, list(m.graph.node))
    assert not light.graph.initializer
    assert [n.name for n in nodes] == ["fc1", "relu", "fc2"]
    assert [o.name for o in light.graph.output] == ["y"] and light.opset_import[0].version == 13


def test_a_wrong_conversion_is_still_caught_and_localised(tmp_path, monkeypatch) -> None:
    path, *_ = _mlp(tmp_path)
    # every Gemm bias off by 0.5: the check (onnxruntime on the file) must name the first node
    monkeypatch.setattr(linear, "tensor", lambda a: torch.from_numpy(np.array(a, np.float32) + 0.5))
    with pytest.raises(InternalError, match="not faithful at node 'fc1'"):
        load_onnx(path)


def test_big_models_are_checked_on_one_input_by_a_child_process(tmp_path, monkeypatch) -> None:
    # The check's forward passes dominate a big model's load: one random input there, three otherwise;
    # a big model's onnxruntime run happens in a child process before the weights are read.
    from speccert.importers import onnx_check

    in_process: list[int] = []
    in_child: list[int] = []
    real_ort, real_run = onnx_check._run_ort, onnx_check.ReferenceRun

    def spy_ort(model, input_name, x, batch, outputs):  # noqa: ANN001, ANN202
        in_process.append(x.shape[0])
        return real_ort(model, input_name, x, batch, outputs)

    def spy_run(path, input_name, x, batch):  # noqa: ANN001, ANN202
        in_child.append(x.shape[0])
        return real_run(path, input_name, x, batch)

    monkeypatch.setattr(onnx_check, "_run_ort", spy_ort)
    monkeypatch.setattr(onnx_check, "ReferenceRun", spy_run)
    path = Path(__file__).resolve().parents[1] / "models" / "mlp.onnx"
    load_onnx(path)
    monkeypatch.setattr(onnx_check, "BIG_MODEL_PARAMETERS", 1000)
    load_onnx(path)
    assert in_process == [onnx_check.N_SAMPLES] and in_child == [1]
