"""AOL re-parametrisation: the rescaled layers have spectral norm <= 1 (dense SVD of the layer as the
linear map it is: padding, stride, input size), orthogonal layers are left as they are, gradients
reach the raw weights, and a run with recipe `aol-lmt` writes plain layers (BatchNorm folded) whose
norms the certifier re-measures from the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from speccert.exporters.onnx_export import save_onnx
from speccert.importers import load
from speccert.ir.graph import Graph
from speccert.ir.ops import BatchNorm, Conv, Linear
from speccert.training.aol import AOLReparam, aol, aol_scale, hidden_layers
from speccert.training.checkpoint import load_checkpoint, run_dir_for
from speccert.training.finetune import finetune
from speccert.training.recipes import Recipe
from speccert.training.targets import Measurement
from speccert.training.toy import separable_data, toy_cnn, toy_mlp

F64 = torch.float64


def _dense_norm(fn, shape: tuple[int, ...]) -> float:  # noqa: ANN001
    n = 1
    for s in shape:
        n *= s
    eye = torch.eye(n, dtype=F64).reshape(n, *shape)
    cols = fn(eye).reshape(n, -1)
    return float(torch.linalg.matrix_norm(cols, ord=2))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 10_000), st.floats(1e-3, 1e3))
def test_linear_aol_norm_at_most_one(n_out: int, n_in: int, seed: int, scale: float) -> None:
    v = torch.randn(n_out, n_in, generator=torch.Generator().manual_seed(seed), dtype=F64) * scale
    w = aol(v)
    assert float(torch.linalg.matrix_norm(w, ord=2)) <= 1 + 1e-12
    assert torch.allclose(aol(3.0 * v), w)  # scale-free in V


@settings(max_examples=20, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 4),
    st.integers(1, 2),
    st.integers(0, 3),
    st.integers(4, 7),
    st.integers(0, 10_000),
)
def test_conv_aol_norm_at_most_one_on_the_real_map(
    c_out: int, c_in: int, k: int, stride: int, pad: int, n: int, seed: int
) -> None:
    """The zero-padded, strided conv on an n x n input, as a dense matrix: ||.||_2 <= 1."""
    pad = min(pad, k - 1)
    v = torch.randn(c_out, c_in, k, k, generator=torch.Generator().manual_seed(seed), dtype=F64)
    w = aol(v)

    def conv(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, stride=stride, padding=pad)

    assert _dense_norm(conv, (c_in, n, n)) <= 1 + 1e-12


def test_orthogonal_layers_are_unchanged_and_the_bound_is_not_vacuous() -> None:
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=F64))
    assert torch.allclose(aol(q), q)
    delta = torch.zeros(3, 3, 3, 3, dtype=F64)
    for c in range(3):
        delta[c, c, 1, 1] = 2.0  # 2 * identity as a 3x3 conv: AOL makes it the identity
    assert torch.allclose(aol(delta), delta / 2)
    # Every shift counts (not only the kernel's own Gram): a [1, 1] kernel has P(-1), P(0), P(1) = 1, 2, 1
    k = torch.ones(1, 1, 1, 2, dtype=F64)
    assert float(aol_scale(k)) == pytest.approx(1 / 2)


def test_reparam_trains_the_raw_weights_and_syncs_the_graph() -> None:
    g = toy_cnn(bn=False)
    names = hidden_layers(g)
    assert names == ["c1", "c2", "l1"]  # the head l2 stays free
    module = g.to_torch()
    rp = AOLReparam(g, names)
    before = g.node("c2").op.weight.detach().clone()
    x = torch.rand(5, 1, 8, 8, dtype=F64)
    with rp.active():
        out = module(x)
        assert torch.allclose(g.node("c2").op.weight, aol(rp.raw[1]))
    out.sum().backward()
    assert all(v.grad is not None and float(v.grad.abs().sum()) > 0 for v in rp.raw)
    assert torch.equal(g.node("c2").op.weight, before)  # outside the block: the graph's own tensor
    rp.sync()
    assert torch.allclose(g.node("c2").op.weight, aol(rp.raw[1]))
    assert isinstance(g.node("c2").op.weight, torch.nn.Parameter)


TRAIN = separable_data(60, (1, 8, 8), seed=1)
VAL = separable_data(30, (1, 8, 8), seed=2)
AOL_RECIPE = Recipe(
    name="test-aol",
    summary="aol",
    penalty="lmt",
    penalty_options={"anneal": 0.5, "eps": 0.1},
    lr=5e-3,
    epochs=2,
    lr_decay="cosine",
    reparam="aol",
)


def _evaluator(graph: Graph) -> Measurement:
    with torch.no_grad():
        acc = float((graph(VAL[0].to(graph.dtype)).argmax(1) == VAL[1]).double().mean())
    return Measurement(acc, {0.1: acc / 2}, 1.0)


def _run(model: Path, out: Path, **kw) -> object:  # noqa: ANN003
    args = dict(targets=["cra@0.1>=0.99"], recipe=AOL_RECIPE, batch_size=20, seed=3, checkpoint_every=2)
    return finetune(str(model), TRAIN, VAL, out=out, evaluator=_evaluator, **(args | kw))


def test_aol_run_writes_plain_layers_with_norm_at_most_one(tmp_path: Path) -> None:
    model = tmp_path / "in.onnx"
    save_onnx(toy_cnn(dtype=torch.float32), model)  # with a BatchNorm after c1
    res = _run(model, tmp_path / "out.onnx")
    assert res.best_epoch >= 1
    g = load(str(tmp_path / "out.onnx"))
    assert not any(isinstance(n.op, BatchNorm) for n in g.nodes)  # folded into c1
    layers = [n for n in g.nodes if isinstance(n.op, (Conv, Linear))]
    for node in layers[:-1]:
        op = node.op
        src = g.node(node.inputs[0]).shape if node.inputs[0] != "input" else g.input_shape

        def lin(x: torch.Tensor, op=op) -> torch.Tensor:  # noqa: ANN001
            w = op.weight.double()
            if isinstance(op, Linear):
                return x.reshape(x.shape[0], -1) @ w.t()
            return F.conv2d(x, w, stride=op.stride, padding=op.padding[0][0])

        assert _dense_norm(lin, tuple(src)) <= 1 + 1e-5, node.name


def test_aol_resume_is_bit_identical(tmp_path: Path) -> None:
    model = tmp_path / "in.onnx"
    save_onnx(toy_mlp(dtype=torch.float32, d_in=64), model)
    train = separable_data(60, (64,), seed=1)
    val = separable_data(30, (64,), seed=2)

    def ev(graph: Graph) -> Measurement:
        with torch.no_grad():
            acc = float((graph(val[0].to(graph.dtype)).argmax(1) == val[1]).double().mean())
        return Measurement(acc, {0.1: acc / 2}, 1.0)

    kw = dict(targets=["cra@0.1>=0.99"], recipe=AOL_RECIPE, batch_size=20, seed=3, checkpoint_every=2)

    class Boom(RuntimeError):
        pass

    def crash(epoch: int, step: int, total: int, loss: float) -> None:
        if epoch == 2 and step == 1:
            raise Boom

    finetune(str(model), train, val, out=tmp_path / "a.onnx", evaluator=ev, **kw)
    with pytest.raises(Boom):
        finetune(str(model), train, val, out=tmp_path / "b.onnx", evaluator=ev, on_step=crash, **kw)
    finetune(str(model), train, val, out=tmp_path / "b.onnx", evaluator=ev, resume=True, **kw)
    a = load_checkpoint(run_dir_for(tmp_path / "a.onnx") / "last.pt")
    b = load_checkpoint(run_dir_for(tmp_path / "b.onnx") / "last.pt")
    assert a["reparam"] and set(a["reparam"]) == set(b["reparam"])
    for k in a["reparam"]:
        assert torch.equal(a["reparam"][k], b["reparam"][k]), k
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_start_keeps_the_function_when_aol_is_a_pure_scale() -> None:
    """V = c Q with Q orthogonal: aol(V) = Q = V / c, so the bias times 1/c and the head times c give
    exactly the input function (without them the bias would dominate: the collapse start() prevents)."""
    g = toy_mlp(d_in=6, hidden=6)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(1), dtype=F64))
    object.__setattr__(g.node("l1").op, "weight", 40.0 * q)
    x = torch.rand(50, 6, dtype=F64)
    before = g(x)
    rp = AOLReparam(g, hidden_layers(g))
    scales = rp.start()
    assert scales == {"l1": pytest.approx(1 / 40)}
    assert torch.allclose(g.node("l1").op.weight, q)
    assert torch.allclose(g(x), before, atol=1e-12)
