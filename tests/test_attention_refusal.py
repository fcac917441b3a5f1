"""A ViT-style attention block (plain torch, written the way timm writes it: the qkv reshape moves the
batch axis) is refused in one line naming attention, through ONNX opsets 9 and 17 and torch.export."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from onnx import helper
from torch import nn

from speccert.errors import UnsupportedModelError
from speccert.importers.attention import onnx_attention
from speccert.importers.onnx_import import load_onnx
from speccert.importers.torch_module import from_module


class TinyViT(nn.Module):
    """Patch embedding, one pre-norm attention block (2 heads) and an MLP, a linear head: timm's layout."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Conv2d(1, dim, 4, stride=4)
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)  # B, N, C
        b, n, c = t.shape
        qkv = self.qkv(self.norm(t)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(dim=-1)
        t = t + self.proj((a @ v).transpose(1, 2).reshape(b, n, c))
        t = t + self.mlp(t)
        return self.head(t.mean(1))


def _export(opset: int, path: Path) -> None:
    torch.manual_seed(0)
    try:
        torch.onnx.export(
            TinyViT().eval(),
            (torch.randn(2, 1, 8, 8),),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["x"],
            dynamic_axes={"x": {0: "N"}},
        )
    except Exception as exc:  # noqa: BLE001 - an exporter without this opset's symbolic functions
        pytest.skip(f"legacy ONNX export at opset {opset} unavailable: {exc}")


def _one_line_naming_attention(err: UnsupportedModelError) -> None:
    text = str(err)
    assert "\n" not in text and len(text) < 400, text
    assert len(err.problems) == 1, err.problems  # attention only: no reshape, permute, Shape, Slice
    op, names, why = err.problems[0]
    assert "×2" in op and "attention" in why, err.problems  # q k^T and attn v, counted once


@pytest.mark.parametrize("opset", [9, 17])
def test_onnx_vit_block_refused_naming_attention(opset: int, tmp_path: Path) -> None:
    p = tmp_path / f"vit{opset}.onnx"
    _export(opset, p)
    for allow in (False, True):  # inspect (allow_unsupported) says the same
        with pytest.raises(UnsupportedModelError) as info:
            load_onnx(p, allow_unsupported=allow)
        _one_line_naming_attention(info.value)


def test_exported_vit_block_refused_naming_attention() -> None:
    torch.manual_seed(0)
    with pytest.raises(UnsupportedModelError) as info:
        from_module(TinyViT().eval(), (1, 8, 8))
    _one_line_naming_attention(info.value)


def test_products_without_softmax_are_not_attention() -> None:
    # x^T x (a bilinear layer) is a product of activations but not attention: left to the converters,
    # which refuse it as a product; a MatMul with a weight is not a product of activations at all.
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["x", "xt"], ["g"], name="gram"),
        helper.make_node("Softmax", ["w"], ["sw"]),  # a softmax of a constant weighs nothing
        helper.make_node("MatMul", ["g", "sw"], ["y"], name="mix"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4, 4])],
        [helper.make_tensor("w", onnx.TensorProto.FLOAT, [4, 4], [0.0] * 16)],
    )
    assert onnx_attention(graph, "x") == []
    nodes[2] = helper.make_node("Softmax", ["g"], ["sw"])
    graph.ClearField("node")
    graph.node.extend(nodes)
    assert [p[0] for p in onnx_attention(graph, "x")] == ["MatMul ×2"]
