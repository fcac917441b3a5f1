"""Upsampling (ONNX Resize / Upsample, torch's upsample_nearest / upsample_bilinear): nearest by whole
factors imported as a ConvTranspose of ones, exact against onnxruntime and torch, its norm sqrt(prod s)
against the dense SVD of its Jacobian; bilinear as one Linear per axis, its bound against the SVD of
onnxruntime's own operator; certified radii that an attack cannot break; every other resampling refused
naming the node. Fine-tuning with one: tests/test_finetune_resample.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import speccert
from speccert.bounds import certify, lipschitz_bound
from speccert.cli.app import main
from speccert.errors import InputError, UnsupportedModelError
from speccert.ir import ConvTranspose, Linear
from speccert.norms import layer_norms

D = torch.float64


def _classifier(path: Path, resize: onnx.NodeProto, inits: dict[str, np.ndarray], opset: int = 13) -> Path:
    """x [N, 2, 4, 4] -> Conv 3x3 -> Relu -> `resize` (input 'r', output 'u') -> Conv 3x3 s2 -> Relu ->
    Flatten -> Gemm to 3 logits; the resize's scales / sizes in `inits`."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((3, 2, 3, 3)) / 3).astype(np.float32)
    w2 = (rng.standard_normal((4, 3, 3, 3)) / 3).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c"], ["r"], name="relu1"),
        resize,
        helper.make_node("Conv", ["u", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1, name="head"),
    ]
    out_hw = _out_hw(resize, inits)
    w3 = (rng.standard_normal((3, 4 * out_hw)) / math.sqrt(4 * out_hw)).astype(np.float32)
    all_inits = {"w1": w1, "w2": w2, "w3": w3, "b3": np.zeros(3, np.float32), **inits}
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(v, k) for k, v in all_inits.items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.save(m, str(path))
    return path


def _out_hw(resize: onnx.NodeProto, inits: dict[str, np.ndarray]) -> int:
    if "sizes" in inits:
        h, w = inits["sizes"][-2:]
    else:
        h, w = 4 * inits["scales"][-2], 4 * inits["scales"][-1]
    return int(math.ceil(int(h) / 2) * math.ceil(int(w) / 2))


def _resize(name: str = "up", opset: int = 13, **kw: object) -> onnx.NodeProto:
    inputs = ["r", "roi" if opset in (11, 12) else "", "scales"]
    return helper.make_node("Resize", inputs, ["u"], name=name, **kw)


ACCEPTED = [
    ({"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}, [1, 1, 2, 2], 4),
    ({}, [1, 1, 3, 2], 6),  # half_pixel + round_prefer_floor (the defaults)
    ({"coordinate_transformation_mode": "tf_half_pixel_for_nn", "nearest_mode": "floor"}, [1, 1, 2, 2], 4),
    ({"coordinate_transformation_mode": "pytorch_half_pixel"}, [1, 1, 2, 4], 8),
]


@pytest.mark.parametrize(("kw", "scales", "copies"), ACCEPTED)
def test_resize_imports_exactly_with_norm_sqrt_copies(
    tmp_path: Path, kw: dict[str, str], scales: list[int], copies: int
) -> None:
    path = _classifier(
        tmp_path / "m.onnx", _resize(mode="nearest", **kw), {"scales": np.array(scales, np.float32)}
    )
    g = speccert.load(str(path))  # the load compares the graph with onnxruntime on probes
    x = np.random.default_rng(1).standard_normal((5, 2, 4, 4)).astype(np.float32)
    want = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    np.testing.assert_allclose(g.forward(torch.from_numpy(x)).detach().numpy(), want, rtol=1e-5, atol=1e-5)
    (up,) = [n for n in g.nodes if isinstance(n.op, ConvTranspose)]
    norm = {ln.name: ln for ln in layer_norms(g)}[up.name]
    # ground truth: the dense SVD of the layer's Jacobian (a copy of each pixel into an s_h x s_w block)
    shape = g.shape_of(up.inputs[0])
    jac = torch.autograd.functional.jacobian(
        lambda v: up.op.forward(v.reshape(1, *shape).to(torch.float32)).double().flatten(),
        torch.zeros(math.prod(shape), dtype=D),
    )
    exact = float(torch.linalg.matrix_norm(jac, 2))
    assert exact == pytest.approx(math.sqrt(copies), rel=1e-12)
    assert norm.upper.value >= exact and norm.upper.value <= exact * (1 + 1e-9)
    assert norm.lower is not None and norm.lower.value <= exact


@pytest.mark.parametrize(
    "kw",
    [
        {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
        {"mode": "linear"},
    ],
)
def test_resize_certificates_hold_against_an_attack(tmp_path: Path, kw: dict[str, str]) -> None:
    path = _classifier(tmp_path / "m.onnx", _resize(**kw), {"scales": np.array([1, 1, 2, 2], np.float32)})
    g = speccert.load(str(path))
    x = torch.randn(60, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = g.forward(x).argmax(1)
    rep = certify(g, (x, y), eps=[0.05], lower_bound=False, audit=40)
    assert rep.audit is not None and rep.audit.successes == 0 and rep.audit.points > 0
    assert math.isfinite(lipschitz_bound(g).upper)


def test_resize_with_sizes_and_upsample_opset9(tmp_path: Path) -> None:
    """sizes over `axes` (opset 18) and the old Upsample import; sizes that fix a dynamic batch at 1
    (onnxruntime would return one row for any batch) are refused."""
    fixed = _classifier(
        tmp_path / "b.onnx",
        helper.make_node("Resize", ["r", "", "", "sizes"], ["u"], name="up", mode="nearest"),
        {"sizes": np.array([1, 3, 8, 12], np.int64)},
    )
    with pytest.raises(UnsupportedModelError, match="resizes the batch axis"):
        speccert.load(str(fixed))
    sizes = _classifier(
        tmp_path / "s.onnx",
        helper.make_node("Resize", ["r", "", "", "sizes"], ["u"], name="up", mode="nearest", axes=[2, 3]),
        {"sizes": np.array([8, 12], np.int64)},
        opset=18,
    )
    up9 = _classifier(
        tmp_path / "u.onnx",
        helper.make_node("Upsample", ["r", "scales"], ["u"], name="up", mode="nearest"),
        {"scales": np.array([1, 1, 2, 2], np.float32)},
        opset=9,
    )
    for path in (sizes, up9):
        g = speccert.load(str(path))
        assert any(isinstance(n.op, ConvTranspose) for n in g.nodes)


REFUSED = [
    ({"mode": "cubic"}, [1, 1, 2, 2], "mode 'cubic'"),
    ({"mode": "linear"}, [1, 1, 3, 3], "not a float32 number"),
    (
        {
            "mode": "nearest",
            "coordinate_transformation_mode": "asymmetric",
            "nearest_mode": "round_prefer_ceil",
        },
        [1, 1, 2, 2],
        "not a whole-number",
    ),
    ({"mode": "nearest", "coordinate_transformation_mode": "align_corners"}, [1, 1, 3, 3], "not a whole"),
    ({"mode": "nearest"}, [1, 1, 1.5, 1.5], "not a whole-number"),
    ({"mode": "nearest"}, [1, 1, 0.5, 0.5], "not a whole-number"),
    ({"mode": "nearest"}, [1, 2, 1, 1], "channel axis"),
]


@pytest.mark.parametrize(("kw", "scales", "reason"), REFUSED)
def test_other_resamplings_are_refused_naming_the_node(
    tmp_path: Path, kw: dict[str, str], scales: list[float], reason: str
) -> None:
    resize = helper.make_node("Resize", ["r", "", "scales"], ["u"], name="my_resize", **kw)
    path = tmp_path / "m.onnx"
    # a valid model even when refused: the head reads a fixed-size pooled vector
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        resize,
        helper.make_node("GlobalAveragePool", ["u"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w"], ["y"], transB=1),
    ]
    c = 2 * int(scales[1])
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [
            numpy_helper.from_array(np.array(scales, np.float32), "scales"),
            numpy_helper.from_array(rng.standard_normal((3, c)).astype(np.float32), "w"),
        ],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    with pytest.raises(UnsupportedModelError) as info:
        speccert.load(str(path))
    assert "my_resize" in str(info.value) and reason in str(info.value)


def test_refusal_on_the_command_line_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _classifier(
        tmp_path / "m.onnx", _resize(mode="cubic"), {"scales": np.array([1, 1, 2, 2], np.float32)}
    )
    code = main(["norms", str(path)])
    err = capsys.readouterr().err
    assert code == 3 and "'up'" in err and "mode 'cubic'" in err and "Traceback" not in err


LINEAR = [
    ({"mode": "linear"}, [1, 1, 2, 2]),  # half_pixel: torch's bilinear, align_corners=False
    ({"mode": "linear", "coordinate_transformation_mode": "asymmetric"}, [1, 1, 4, 2]),
    ({"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}, [1, 1, 2, 8]),
]


def _explicit_operator(
    node: onnx.NodeProto, inits: dict[str, np.ndarray], shape: tuple[int, ...]
) -> np.ndarray:
    """The Resize node alone as an explicit matrix, by onnxruntime on the basis vectors (ground truth
    independent of the importer)."""
    g = helper.make_graph(
        [node],
        "r",
        [helper.make_tensor_value_info("r", TensorProto.FLOAT, ["N", *shape])],
        [helper.make_tensor_value_info("u", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    n = math.prod(shape)
    basis = np.eye(n, dtype=np.float32).reshape(n, *shape)
    return sess.run(None, {"r": basis})[0].reshape(n, -1).T.astype(np.float64)


@pytest.mark.parametrize(("kw", "scales"), LINEAR)
def test_linear_resize_norm_is_the_operators(tmp_path: Path, kw: dict[str, str], scales: list[int]) -> None:
    """Bilinear resampling becomes a Linear per axis; the composed bound of the imported graph equals the
    spectral norm of onnxruntime's own operator (its Kronecker structure makes the product exact)."""
    inits = {"scales": np.array(scales, np.float32)}
    path = _classifier(tmp_path / "m.onnx", _resize(**kw), inits)
    g = speccert.load(str(path))
    x = np.random.default_rng(2).standard_normal((5, 2, 4, 4)).astype(np.float32)
    want = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    np.testing.assert_allclose(g.forward(torch.from_numpy(x)).detach().numpy(), want, rtol=1e-5, atol=1e-5)
    # the resize alone, imported: its certified bound against the explicit operator's SVD
    alone = tmp_path / "alone.onnx"
    node = _resize(**kw)
    gr = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), node],
        "a",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("u", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    onnx.save(helper.make_model(gr, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(alone))
    ga = speccert.load(str(alone))
    exact = float(np.linalg.norm(_explicit_operator(node, inits, (3, 4, 4)), 2))
    bound = lipschitz_bound(ga).upper
    assert exact <= bound <= exact * (1 + 1e-9)


class _Up(nn.Module):
    def __init__(self, **kw: object) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU())
        self.up = nn.Upsample(**kw)  # type: ignore[arg-type]
        self.head = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten())
        self.fc = nn.LazyLinear(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.up(self.body(x))))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's TorchScript ONNX exporter
@pytest.mark.parametrize(
    "kw",
    [
        {"scale_factor": 2, "mode": "nearest"},
        {"scale_factor": (3, 2), "mode": "nearest-exact"},
        {"size": (8, 12), "mode": "nearest"},
        {"scale_factor": 2, "mode": "bilinear"},
        {"scale_factor": (2, 4), "mode": "bilinear", "align_corners": False},
        {"size": (7, 13), "mode": "bilinear", "align_corners": True},
    ],
)
def test_torch_upsample_through_pt2_and_onnx(tmp_path: Path, kw: dict[str, object]) -> None:
    torch.manual_seed(0)
    m = _Up(**kw).eval()
    x = torch.rand(4, 2, 4, 4)
    m(x)  # materialise the lazy head
    torch.export.save(torch.export.export(m, (x,)), str(tmp_path / "m.pt2"))
    paths = ["m.pt2"]
    if kw["mode"] != "nearest-exact":  # torch's ONNX exporter has no nearest-exact
        torch.onnx.export(m, (x,), str(tmp_path / "m.onnx"), dynamo=False, opset_version=13)
        paths.append("m.onnx")
    for path in paths:
        g = speccert.load(str(tmp_path / path))
        kind = Linear if kw["mode"] == "bilinear" else ConvTranspose
        assert sum(isinstance(n.op, kind) for n in g.nodes) >= 1 + (kind is Linear)  # the head is a Linear
        torch.testing.assert_close(g.forward(x), m(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"scale_factor": 1.5, "mode": "nearest"}, "not a whole-number"),
        ({"scale_factor": 3, "mode": "bilinear"}, "float32"),
    ],
)
def test_torch_inexact_upsample_is_refused(tmp_path: Path, kw: dict[str, object], reason: str) -> None:
    m = _Up(**kw).eval()
    x = torch.rand(2, 2, 4, 4)
    m(x)
    torch.export.save(torch.export.export(m, (x,)), str(tmp_path / "m.pt2"))
    with pytest.raises(UnsupportedModelError, match=reason):
        speccert.load(str(tmp_path / "m.pt2"))


def test_nearest_upsampling_is_written_back_as_a_resize(tmp_path: Path) -> None:
    """speccert's ONNX writer turns the fixed ConvTranspose of ones back into a Resize: onnxruntime computes
    the imported graph's function, and the file re-imports with the layer fixed again."""
    from speccert.exporters.onnx_export import save_onnx

    path = _classifier(
        tmp_path / "m.onnx", _resize(mode="nearest"), {"scales": np.array([1, 1, 3, 2], np.float32)}
    )
    g = speccert.load(str(path))
    out = save_onnx(g, tmp_path / "out.onnx")
    kinds = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert "Resize" in kinds and "ConvTranspose" not in kinds
    x = np.random.default_rng(3).standard_normal((4, 2, 4, 4)).astype(np.float32)
    got = ort.InferenceSession(str(out)).run(None, {g.source.extra.get("onnx_input", "x"): x})[0]
    np.testing.assert_allclose(got, g.forward(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-5)
    again = speccert.load(str(out))
    assert [n.op.fixed for n in again.nodes if isinstance(n.op, ConvTranspose)] == [True]


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_pt2_written_by_speccert_reads_back_fixed(tmp_path: Path, mode: str) -> None:
    """A graph written as .pt2 (fine-tuning's output for a .pt2 input) keeps its upsampling's constants as
    buffers, not weights: read back, the same layers are fixed (a second fine-tuning leaves them
    alone), the learned ones are not, and the function is the same."""
    from speccert.importers.torch_import import save_pt2

    torch.manual_seed(0)
    m = _Up(scale_factor=2, mode=mode).eval()
    x = torch.rand(4, 2, 4, 4)
    m(x)
    torch.export.save(torch.export.export(m, (x,)), str(tmp_path / "m.pt2"))
    g = speccert.load(str(tmp_path / "m.pt2"))
    again = speccert.load(str(save_pt2(g, tmp_path / "out.pt2")))

    def flags(graph: speccert.Graph) -> list[tuple[str, bool]]:
        return [
            (type(n.op).__name__, n.op.fixed)
            for n in graph.nodes
            if isinstance(n.op, (Linear, ConvTranspose))
        ]

    assert flags(again) == flags(g)
    assert sum(fixed for _, fixed in flags(g)) == (2 if mode == "bilinear" else 1)
    assert not all(fixed for _, fixed in flags(g))  # the head stays a weight
    torch.testing.assert_close(again.forward(x), g.forward(x), rtol=0, atol=0)


def test_only_speccerts_record_makes_a_pt2_layer_fixed(tmp_path: Path) -> None:
    """A .pt2 written by speccert names its fixed weights in the archive (speccert.ir.FIXED_METADATA); a
    user's model, whose weight may be a buffer for its own reasons (or lifted as one by a conversion, as
    TorchScript's is), is read as written: learned. A record that is not a list of names is exit 4."""
    from speccert.importers.torch_import import save_pt2
    from speccert.ir.ops import FIXED_METADATA

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mix", torch.randn(3, 6))
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.nn.functional.linear(x, self.mix))

    x = torch.rand(2, 6)
    ep = torch.export.export(Net().eval(), (x,))
    torch.export.save(ep, str(tmp_path / "n.pt2"))
    g = speccert.load(str(tmp_path / "n.pt2"))
    assert [n.op.fixed for n in g.nodes if isinstance(n.op, Linear)] == [False, False]
    save_pt2(g, tmp_path / "again.pt2")  # nothing fixed: no record
    extra = {FIXED_METADATA: ""}
    torch.export.load(str(tmp_path / "again.pt2"), extra_files=extra)
    assert extra[FIXED_METADATA] == ""
    for bad in ('{"mix": 1}', "not json", '["mix", 2]'):
        torch.export.save(ep, str(tmp_path / "bad.pt2"), extra_files={FIXED_METADATA: bad})
        with pytest.raises(InputError, match=FIXED_METADATA):
            speccert.load(str(tmp_path / "bad.pt2"))


def test_bilinear_upsampling_written_to_onnx_reads_back_fixed(tmp_path: Path) -> None:
    """A bilinear upsampling goes out as the MatMuls and Transposes it became; the file's metadata names
    their weights (speccert.ir.FIXED_METADATA), so they read back fixed, and onnxruntime computes the
    graph's function. Metadata that is not a list of names is a clear error, not a silent guess."""
    from speccert.exporters.onnx_export import save_onnx
    from speccert.ir.ops import FIXED_METADATA

    path = _classifier(
        tmp_path / "m.onnx", _resize(mode="linear"), {"scales": np.array([1, 1, 2, 2], np.float32)}
    )
    g = speccert.load(str(path))
    out = save_onnx(g, tmp_path / "out.onnx")
    written = onnx.load(str(out))
    names = json.loads({p.key: p.value for p in written.metadata_props}[FIXED_METADATA])
    assert len(names) == 2 and {i.name for i in written.graph.initializer} >= set(names)
    again = speccert.load(str(out))

    def fixed(graph: speccert.Graph) -> list[bool]:
        return [n.op.fixed for n in graph.nodes if isinstance(n.op, Linear)]

    assert fixed(g) == fixed(again) and fixed(g).count(True) == 2
    x = np.random.default_rng(5).standard_normal((3, 2, 4, 4)).astype(np.float32)
    got = ort.InferenceSession(str(out)).run(None, {g.source.extra.get("onnx_input", "x"): x})[0]
    np.testing.assert_allclose(got, again.forward(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-5)
    for bad in ('{"a": 1}', "not json", '["ok", 3]'):
        onnx.helper.set_model_props(written, {FIXED_METADATA: bad})
        onnx.save(written, str(tmp_path / "bad.onnx"))
        with pytest.raises(InputError, match=FIXED_METADATA):
            speccert.load(str(tmp_path / "bad.onnx"))
