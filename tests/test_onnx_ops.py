"""Differential tests of every registered ONNX converter against onnxruntime (one-node example models
carried by each registration), plus the registry's own rules."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from speccert.errors import InternalError, UnsupportedModelError
from speccert.importers.onnx_import import load_onnx
from speccert.importers.onnx_ops import (
    MAX_OPSET,
    MIN_OPSET,
    ONNX_OPS,
    Converter,
    converter,
    find_converter,
    supported_onnx_ops,
    supported_onnx_ops_markdown,
)
from speccert.importers.onnx_ops.examples import model, one_node, randn
from speccert.importers.onnx_ops.fusions import fuse_activations
from speccert.ir.ops import Opaque

EXAMPLES = [
    pytest.param(key, i, id=f"{conv.op_type}-{conv.opsets[0]}-{conv.opsets[1]}-ex{i}")
    for key, conv in ONNX_OPS.items()
    for i in range(len(conv.examples))
]

REQUIRED = {
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Relu",
    "LeakyRelu",
    "Elu",
    "Sigmoid",
    "Tanh",
    "Softplus",
    "Gelu",
    "Identity",
    "Dropout",
    "BatchNormalization",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Pad",
    "Flatten",
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Concat",
    "Constant",
    "Softmax",
    "LogSoftmax",
    "Shape",
}


def ort_run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def save(m: onnx.ModelProto, tmp_path: Path, name: str = "m.onnx") -> Path:
    p = tmp_path / name
    onnx.save(m, str(p))
    return p


def test_every_converter_has_an_example() -> None:
    missing = [c.op_type for c in (ONNX_OPS.get(k) for k in ONNX_OPS) if not c.examples]
    assert not missing, f"converters without an example model: {missing}"


def test_fusion_leaves_unrelated_products_alone(tmp_path: Path) -> None:
    # sigmoid(x) * relu(x) is not SiLU: it must stay an unsupported product
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["s"]),
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Mul", ["r", "s"], ["y"], name="prod"),
    ]
    with pytest.raises(UnsupportedModelError, match="prod"):
        load_onnx(save(model(nodes, (4,), {}, 13), tmp_path))


def test_required_ops_are_registered_over_the_opset_range() -> None:
    listed = {op for op, _ in supported_onnx_ops()}
    assert listed >= REQUIRED
    for op in REQUIRED - {"Gelu"}:
        for opset in (MIN_OPSET, 13, MAX_OPSET):
            assert find_converter("", op, opset) is not None, (op, opset)


@pytest.mark.parametrize(("key", "index"), EXAMPLES)
def test_converter_matches_onnxruntime(key: tuple, index: int, tmp_path: Path) -> None:
    conv: Converter = ONNX_OPS.get(key)
    m = conv.examples[index]()
    opset = next(o.version for o in m.opset_import if o.domain == "")
    assert conv.opsets[0] <= opset <= conv.opsets[1], "example outside the converter's opset range"
    used = [(n.domain, n.op_type) for n in fuse_activations(m.graph)]
    assert (conv.domain, conv.op_type) in used, "example does not use the op"
    g = load_onnx(save(m, tmp_path), check=True)
    assert not g.unsupported()
    x = np.random.default_rng(7).standard_normal((3, *g.input_shape)).astype(np.float32)
    ref = ort_run(m, x)
    got = g.forward(torch.from_numpy(x)).detach().numpy()
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_duplicate_and_overlapping_registration_raise() -> None:
    def fake(ctx, node, inputs):  # noqa: ANN001, ANN202
        return []

    key = ("", "FakeOpForTest", (8, 12))
    try:
        converter("FakeOpForTest", (8, 12))(fake)
        with pytest.raises(KeyError):
            converter("FakeOpForTest", (8, 12))(fake)
        with pytest.raises(KeyError, match="overlap"):
            converter("FakeOpForTest", (12, 15))(fake)
    finally:
        ONNX_OPS._entries.pop(key, None)
    assert key not in ONNX_OPS


def _sign_and_product() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Sign", ["x"], ["s"], name="sign_node"),
        helper.make_node("Mul", ["s", "x"], ["p"], name="product"),
        helper.make_node("Gemm", ["p", "w"], ["y"], name="fc", transB=1),
    ]
    return model(nodes, (4,), {"w": randn(3, 4)}, 13)


def test_unsupported_ops_are_reported_all_at_once(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelError) as info:
        load_onnx(save(_sign_and_product(), tmp_path))
    problems = info.value.problems
    assert [(op, name) for op, name, _ in problems] == [("Sign", "sign_node"), ("Mul", "product")]
    assert "step" in problems[0][2] and "input-dependent" in problems[1][2]
    assert info.value.exit_code == 3


def test_allow_unsupported_keeps_runnable_opaque_nodes(tmp_path: Path) -> None:
    m = _sign_and_product()
    g = load_onnx(save(m, tmp_path), allow_unsupported=True)
    opaque = [n for n in g.nodes if isinstance(n.op, Opaque)]
    assert [n.op.source_op for n in opaque] == ["Sign", "Mul"]
    assert {n.name for n in g.unsupported()} == {"sign_node", "product"}
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(g.forward(torch.from_numpy(x)).numpy(), ort_run(m, x), rtol=1e-5, atol=1e-5)


def test_unknown_op_runs_through_the_reference_evaluator(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Softsign", ["x"], ["h"], name="softsign"),
        helper.make_node("Relu", ["h"], ["y"]),
    ]
    m = model(nodes, (6,), {}, 14)
    g = load_onnx(save(m, tmp_path), allow_unsupported=True)
    assert [n.op.source_op for n in g.nodes if isinstance(n.op, Opaque)] == ["Softsign"]
    x = np.random.default_rng(1).standard_normal((2, 6)).astype(np.float32) * 4
    np.testing.assert_allclose(g.forward(torch.from_numpy(x)).numpy(), ort_run(m, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("op", "kw", "x_shape", "inits", "inputs", "reason"),
    [
        ("Transpose", {"perm": [1, 0, 2]}, (3, 4), {}, ["x"], "batch"),
        ("Flatten", {"axis": 0}, (3, 4), {}, ["x"], "batch"),
        ("Unsqueeze", {"axes": [0]}, (3,), {}, ["x"], "batch"),
        ("Concat", {"axis": 0}, (3,), {}, ["x", "x"], "batch"),
        ("Softmax", {"axis": 1}, (3, 4), {}, ["x"], "last"),
        ("Pad", {"mode": "reflect", "pads": [0, 1, 0, 1]}, (5,), {}, ["x"], "reflect"),
        ("Gemm", {"transA": 1}, (4,), {"w": randn(4, 3)}, ["x", "w"], "batch"),
        ("MatMul", {}, (4,), {"w": randn(2, 3)}, ["w", "x"], "batch"),
        ("Div", {}, (4,), {"c": randn(4)}, ["c", "x"], "Lipschitz"),
    ],
)
def test_ops_that_leave_the_ir_are_refused_with_a_reason(
    op: str, kw: dict, x_shape: tuple, inits: dict, inputs: list, reason: str, tmp_path: Path
) -> None:
    opset = 10 if op == "Pad" else 11 if op == "Unsqueeze" else 13
    m = one_node(op, x_shape, inputs, inits, opset=opset, **kw)
    with pytest.raises(UnsupportedModelError, match=reason):
        load_onnx(save(m, tmp_path))


def test_shape_arithmetic_with_the_batch_size_is_refused(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Mul", ["s", "two"], ["s2"]),
        helper.make_node("Reshape", ["x", "s2"], ["y"]),
    ]
    m = model(nodes, (4,), {"two": np.array([2, 1], np.int64)}, 13)
    with pytest.raises(UnsupportedModelError, match="batch"):
        load_onnx(save(m, tmp_path))


def test_softmax_inside_the_graph_is_unsupported(tmp_path: Path) -> None:
    nodes = [helper.make_node("Softmax", ["x"], ["s"], name="sm"), helper.make_node("Relu", ["s"], ["y"])]
    with pytest.raises(UnsupportedModelError, match="output"):
        load_onnx(save(model(nodes, (5,), {}, 13), tmp_path))


def test_opset_outside_range_is_refused(tmp_path: Path) -> None:
    m = one_node("Relu", (3,), opset=7)
    with pytest.raises(UnsupportedModelError, match="opset 7"):
        load_onnx(save(m, tmp_path))


def test_unfaithful_converter_is_caught_and_localised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = next(k for k in ONNX_OPS if k[1] == "Tanh")
    sigmoid = ONNX_OPS.get(next(k for k in ONNX_OPS if k[1] == "Sigmoid"))
    monkeypatch.setitem(ONNX_OPS._entries, key, Converter("Tanh", "", key[2], sigmoid.fn))
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="first"),
        helper.make_node("Tanh", ["r"], ["t"], name="bad"),
        helper.make_node("Gemm", ["t", "w"], ["y"], name="fc", transB=1),
    ]
    with pytest.raises(InternalError, match="'bad'.*differs from onnxruntime"):
        load_onnx(save(model(nodes, (4,), {"w": randn(2, 4)}, 13), tmp_path))


def test_matmul_bias_add_becomes_one_linear(tmp_path: Path) -> None:
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])]
    m = model(nodes, (4,), {"w": randn(4, 3), "b": randn(3, seed=5)}, 13)
    g = load_onnx(save(m, tmp_path))
    assert [n.op_type for n in g.nodes] == ["Linear"] and g.nodes[0].op.bias is not None


def test_docs_support_table_is_generated_from_the_registry() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "onnx.md").read_text()
    table = doc.split("<!-- onnx-ops:begin -->\n")[1].split("<!-- onnx-ops:end -->")[0]
    assert table == supported_onnx_ops_markdown(), "docs/onnx.md is stale: regenerate its operator table"


@settings(max_examples=12, deadline=None, derandomize=True)
@given(st.data())
def test_random_conv_and_pool_attributes_match_onnxruntime(data: st.DataObject) -> None:
    k = data.draw(st.tuples(st.integers(1, 3), st.integers(1, 3)))
    s = data.draw(st.tuples(st.integers(1, 3), st.integers(1, 2)))
    d = data.draw(st.tuples(st.integers(1, 2), st.integers(1, 2)))
    pads = data.draw(st.lists(st.integers(0, 2), min_size=4, max_size=4))
    groups = data.draw(st.sampled_from([1, 2]))
    h, w = data.draw(st.integers(6, 9)), data.draw(st.integers(5, 8))
    conv = one_node(
        "Conv",
        (4, h, w),
        ["x", "w"],
        {"w": randn(6, 4 // groups, *k, seed=sum(k))},
        opset=13,
        strides=list(s),
        dilations=list(d),
        pads=pads,
        group=groups,
    )
    kp = [min(p, kk - 1) for p, kk in zip(pads, [*k, *k], strict=True)]  # onnxruntime wants pads < kernel
    pool = one_node(
        "MaxPool",
        (4, h, w),
        opset=13,
        kernel_shape=list(k),
        strides=list(s),
        pads=kp,
        ceil_mode=data.draw(st.sampled_from([0, 1])),
    )
    for m in (conv, pool):
        with tempfile.TemporaryDirectory() as tmp:
            onnx.save(m, str(Path(tmp) / "m.onnx"))
            g = load_onnx(Path(tmp) / "m.onnx")
        x = np.random.default_rng(0).standard_normal((2, 4, h, w)).astype(np.float32)
        np.testing.assert_allclose(
            g.forward(torch.from_numpy(x)).numpy(), ort_run(m, x), rtol=1e-5, atol=1e-5
        )
