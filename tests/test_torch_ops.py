"""Differential tests of every registered ATen converter, parametrised over the registry.

Each converter has an example here: a one-op module calling the ATen overload directly. The test
exports it, checks the op really is in the exported graph (as exported, or after decomposition),
converts that graph, and compares the IR with the module on random inputs. A converter registered
without an example fails `test_every_converter_has_an_example`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from speccert.importers.aten_ops import ATEN_OPS, exported_to_graph
from speccert.importers.aten_ops.base import aten_op
from speccert.importers.aten_ops.walk import op_name

aten = torch.ops.aten
T = torch.Tensor


@dataclass(frozen=True)
class Example:
    shape: tuple[int, ...]
    fn: Callable[[T, dict[str, T]], T]
    params: dict[str, tuple[int, ...]] = field(default_factory=dict)


def _bn(x: T, p: dict[str, T]) -> tuple[T, T, T, T]:
    return p["w"], p["b"], p["m"], p["v"].abs() + 0.5


BN = {"w": (3,), "b": (3,), "m": (3,), "v": (3,)}
EXAMPLES: dict[str, Example] = {
    "aten._adaptive_avg_pool2d.default": Example(
        (2, 4, 6), lambda x, p: aten._adaptive_avg_pool2d.default(x, [2, 3])
    ),
    "aten._log_softmax.default": Example((5,), lambda x, p: aten._log_softmax.default(x, -1, False)),
    "aten._native_batch_norm_legit.default": Example(
        (3, 4, 4), lambda x, p: aten._native_batch_norm_legit.default(x, *_bn(x, p), False, 0.1, 1e-3)[0], BN
    ),
    "aten._native_batch_norm_legit_no_training.default": Example(
        (3, 4, 4),
        lambda x, p: aten._native_batch_norm_legit_no_training.default(x, *_bn(x, p), 0.1, 1e-5)[0],
        BN,
    ),
    "aten._softmax.default": Example((5,), lambda x, p: aten._softmax.default(x, 1, False)),
    "aten._to_copy.default": Example((3,), lambda x, p: aten._to_copy.default(x, dtype=torch.float32) * 2),
    "aten._unsafe_view.default": Example((3, 4), lambda x, p: aten._unsafe_view.default(x * 1, [2, 12])),
    "aten._upsample_nearest_exact1d.default": Example(
        (2, 3), lambda x, p: aten._upsample_nearest_exact1d.default(x, [6])
    ),
    "aten._upsample_nearest_exact1d.vec": Example(
        (2, 3), lambda x, p: aten._upsample_nearest_exact1d.vec(x, None, [2.0])
    ),
    "aten._upsample_nearest_exact2d.default": Example(
        (2, 3, 4), lambda x, p: aten._upsample_nearest_exact2d.default(x, [6, 8])
    ),
    "aten._upsample_nearest_exact2d.vec": Example(
        (2, 3, 4), lambda x, p: aten._upsample_nearest_exact2d.vec(x, None, [3.0, 2.0])
    ),
    "aten.adaptive_avg_pool1d.default": Example(
        (3, 6), lambda x, p: aten.adaptive_avg_pool1d.default(x, [2])
    ),
    "aten.adaptive_avg_pool2d.default": Example(
        (3, 5, 5), lambda x, p: aten.adaptive_avg_pool2d.default(x, [1, 1])
    ),
    "aten.add.Scalar": Example((3,), lambda x, p: aten.add.Scalar(x, 2.5)),
    "aten.add.Tensor": Example((3, 2), lambda x, p: aten.add.Tensor(torch.relu(x), x, alpha=2)),
    "aten.addmm.default": Example(
        (4,), lambda x, p: aten.addmm.default(p["b"], x, p["w"], beta=0.5, alpha=2), {"b": (3,), "w": (4, 3)}
    ),
    "aten.addcmul.default": Example(
        (2, 3),
        lambda x, p: (
            aten.addcmul.default(p["b"], p["a"], x, value=0.5) + aten.addcmul.default(x, x * 0 + 1, p["a"])
        ),
        {"a": (3,), "b": (2, 3)},
    ),
    "aten.alias.default": Example((3,), lambda x, p: aten.alias.default(x) * 2),
    "aten.avg_pool1d.default": Example(
        (2, 7), lambda x, p: aten.avg_pool1d.default(x, [3], [2], [1], False, False)
    ),
    "aten.avg_pool2d.default": Example(
        (2, 5, 5), lambda x, p: aten.avg_pool2d.default(x, [2, 2], [1, 1], [1, 1])
    ),
    "aten.batch_norm.default": Example(
        (3, 4), lambda x, p: aten.batch_norm.default(x, *_bn(x, p), False, 0.1, 1e-5, False), BN
    ),
    "aten.cat.default": Example(
        (2, 3),
        lambda x, p: torch.cat(
            [
                aten.cat.default([torch.relu(x), x, -x], 2).flatten(1),
                aten.cat.default([p["c"].expand(x.shape[0], 1, 3), x], 1).flatten(1),
            ],
            1,
        ),
        {"c": (1, 1, 3)},
    ),
    "aten.clamp.default": Example(
        (4,), lambda x, p: aten.clamp.default(x, 0.0) + aten.clamp.default(x, -0.5, 0.7)
    ),
    "aten.clamp_min.default": Example((4,), lambda x, p: aten.clamp_min.default(x, 0.3)),
    "aten.clamp_max.default": Example((4,), lambda x, p: aten.clamp_max.default(x, -0.2)),
    "aten.hardtanh.default": Example((3, 4), lambda x, p: aten.hardtanh.default(x * 4, 0.0, 6.0)),
    "aten.relu6.default": Example((3, 4), lambda x, p: aten.relu6.default(x * 4)),
    "aten.hardswish.default": Example((3, 4), lambda x, p: aten.hardswish.default(x * 4)),
    "aten.hardsigmoid.default": Example((3, 4), lambda x, p: aten.hardsigmoid.default(x * 4)),
    "aten.abs.default": Example((5,), lambda x, p: aten.abs.default(x)),
    "aten.maximum.default": Example((2, 3), lambda x, p: aten.maximum.default(x, p["c"]), {"c": (3,)}),
    "aten.minimum.default": Example((2, 3), lambda x, p: aten.minimum.default(p["c"], x), {"c": (2, 1)}),
    "aten.prelu.default": Example((3, 4, 4), lambda x, p: aten.prelu.default(x, p["w"]), {"w": (3,)}),
    "aten._prelu_kernel.default": Example(
        (3, 2), lambda x, p: aten._prelu_kernel.default(x, p["w"].reshape(3, 1)), {"w": (3,)}
    ),
    "aten.sort.default": Example((4, 3), lambda x, p: aten.sort.default(x, 1, True)[0]),
    "aten.sort.stable": Example((5,), lambda x, p: aten.sort.stable(x, stable=True, dim=-1)[0]),
    "aten.topk.default": Example((3, 6), lambda x, p: aten.topk.default(x, 4, -1, False)[0]),
    "aten.max.dim": Example((2, 5, 3), lambda x, p: aten.max.dim(x, 2, True)[0]),
    "aten.min.dim": Example((2, 4), lambda x, p: aten.min.dim(x, 1)[0]),
    "aten.amax.default": Example((4, 2), lambda x, p: aten.amax.default(x, [2], True)),
    "aten.amin.default": Example((3, 5), lambda x, p: aten.amin.default(x, [-2])),
    "aten.layer_norm.default": Example(
        (3, 5), lambda x, p: aten.layer_norm.default(x, [5], p["w"], p["b"], 1e-3), {"w": (5,), "b": (5,)}
    ),
    "aten.native_layer_norm.default": Example(
        (2, 3, 4),
        lambda x, p: aten.native_layer_norm.default(x, [3, 4], p["w"], None, 1e-5)[0],
        {"w": (3, 4)},
    ),
    "aten.group_norm.default": Example(
        (4, 3, 3), lambda x, p: aten.group_norm.default(x, 2, p["w"], p["b"], 1e-5), {"w": (4,), "b": (4,)}
    ),
    "aten.native_group_norm.default": Example(
        (4, 3), lambda x, p: aten.native_group_norm.default(x, p["w"], None, 2, 4, 3, 4, 1e-5)[0], {"w": (4,)}
    ),
    "aten.split.Tensor": Example((5, 2), lambda x, p: torch.cat(aten.split.Tensor(x, 2, 1)[::-1], 1)),
    "aten.split_with_sizes.default": Example(
        (2, 6), lambda x, p: torch.relu(aten.split_with_sizes.default(x, [1, 4, 1], -1)[1])
    ),
    "aten.chunk.default": Example((4, 3), lambda x, p: aten.chunk.default(x, 2, 1)[1] * 2),
    "aten.slice.Tensor": Example((6, 3), lambda x, p: aten.slice.Tensor(x, 1, 1, 5, 2)),
    "aten.narrow.default": Example((6, 3), lambda x, p: aten.narrow.default(x, 2, 1, 2)),
    "aten.select.int": Example((3, 4), lambda x, p: aten.select.int(x, 1, -1)),
    "aten.unbind.int": Example((3, 4), lambda x, p: aten.unbind.int(x, 2)[1] * 2),
    "aten.clone.default": Example((4,), lambda x, p: aten.clone.default(x) * 3),
    "aten.constant_pad_nd.default": Example(
        (2, 3, 3), lambda x, p: aten.constant_pad_nd.default(x, [1, 2, 0, 1], 0.0)
    ),
    "aten.contiguous.default": Example((2, 3), lambda x, p: aten.contiguous.default(x.transpose(1, 2))),
    "aten.conv1d.default": Example(
        (2, 9),
        lambda x, p: aten.conv1d.default(x, p["w"], p["b"], [2], [1], [2], 1),
        {"w": (4, 2, 3), "b": (4,)},
    ),
    "aten.conv1d.padding": Example(
        (2, 9), lambda x, p: aten.conv1d.padding(x, p["w"], None, [1], "same", [1], 2), {"w": (4, 1, 4)}
    ),
    "aten.conv2d.default": Example(
        (4, 7, 6),
        lambda x, p: aten.conv2d.default(x, p["w"], p["b"], [2, 1], [1, 2], [1, 2], 2),
        {"w": (6, 2, 3, 3), "b": (6,)},
    ),
    "aten.conv2d.padding": Example(
        (2, 6, 6),
        lambda x, p: aten.conv2d.padding(x, p["w"], p["b"], [1, 1], "same", [2, 1], 1),
        {"w": (3, 2, 2, 4), "b": (3,)},
    ),
    "aten.conv_transpose1d.default": Example(
        (2, 5),
        lambda x, p: aten.conv_transpose1d.default(x, p["w"], p["b"], [2], [1], [1], 1, [1]),
        {"w": (2, 3, 3), "b": (3,)},
    ),
    "aten.conv_transpose2d.input": Example(
        (4, 3, 3),
        lambda x, p: aten.conv_transpose2d.input(x, p["w"], None, [2, 2], [0, 1], [1, 0], 2, [1, 1]),
        {"w": (4, 1, 3, 3)},
    ),
    "aten.convolution.default": Example(
        (2, 4, 4),
        lambda x, p: aten.convolution.default(x, p["w"], p["b"], [2, 2], [1, 1], [1, 1], True, [1, 1], 1),
        {"w": (2, 3, 3, 3), "b": (3,)},
    ),
    "aten.detach.default": Example((3,), lambda x, p: aten.detach.default(x) + 1),
    "aten.div.Scalar": Example((3,), lambda x, p: aten.div.Scalar(x, 4.0)),
    "aten.div.Tensor": Example((3, 2), lambda x, p: aten.div.Tensor(x, p["c"].abs() + 0.5), {"c": (3, 1)}),
    "aten.div.Tensor_mode": Example(
        (3,), lambda x, p: aten.div.Tensor_mode(x, p["c"] + 3, rounding_mode=None), {"c": (3,)}
    ),
    "aten.dropout.default": Example((4,), lambda x, p: aten.dropout.default(x, 0.5, False) * 2),
    "aten.elu.default": Example(
        (5,), lambda x, p: aten.elu.default(x, 0.7) + aten.elu.default(x, 1.3, 0.8, 2.5)
    ),
    "aten.selu.default": Example((5,), lambda x, p: aten.selu.default(x * 3)),
    "aten.celu.default": Example((5,), lambda x, p: aten.celu.default(x * 3, 0.4)),
    "aten.flatten.using_ints": Example((2, 3, 2), lambda x, p: aten.flatten.using_ints(x, 2, 3)),
    "aten.gelu.default": Example(
        (5,), lambda x, p: aten.gelu.default(x) + aten.gelu.default(x, approximate="tanh")
    ),
    "aten.leaky_relu.default": Example((5,), lambda x, p: aten.leaky_relu.default(x, 0.2)),
    "aten.lift_fresh_copy.default": Example(
        (3,), lambda x, p: x + aten.lift_fresh_copy.default(torch.tensor([1.0, 2.0, 3.0]))
    ),
    "aten.linear.default": Example(
        (2, 4), lambda x, p: aten.linear.default(x, p["w"], p["b"]), {"w": (3, 4), "b": (3,)}
    ),
    "aten.log_softmax.int": Example((5,), lambda x, p: aten.log_softmax.int(x, -1)),
    "aten.matmul.default": Example((3, 4), lambda x, p: aten.matmul.default(x, p["w"]), {"w": (4, 2)}),
    "aten.max_pool1d.default": Example((2, 7), lambda x, p: aten.max_pool1d.default(x, [2], [], [1])),
    "aten.max_pool2d.default": Example(
        (2, 7, 7), lambda x, p: aten.max_pool2d.default(x, [3, 3], [2, 2], [1, 1], [1, 1], True)
    ),
    "aten.max_pool2d_with_indices.default": Example(
        (2, 6, 6), lambda x, p: aten.max_pool2d_with_indices.default(x, [2, 2], [2, 1], [1, 0], [1, 2])[0]
    ),
    "aten.mean.dim": Example(
        (3, 4, 5),
        lambda x, p: torch.cat([aten.mean.dim(x, [-1, 2], False), aten.mean.dim(x, [1], True).flatten(1)], 1),
    ),
    "aten.mm.default": Example((4,), lambda x, p: aten.mm.default(x, p["w"]), {"w": (4, 3)}),
    "aten.mul.Scalar": Example((3,), lambda x, p: aten.mul.Scalar(x, -3.0)),
    "aten.mul.Tensor": Example((2, 3), lambda x, p: aten.mul.Tensor(p["c"], x), {"c": (1, 3)}),
    "aten.native_batch_norm.default": Example(
        (3, 4), lambda x, p: aten.native_batch_norm.default(x, *_bn(x, p), False, 0.1, 1e-5)[0], BN
    ),
    "aten.native_dropout.default": Example((4,), lambda x, p: aten.native_dropout.default(x, 0.5, False)[0]),
    "aten.neg.default": Example((4,), lambda x, p: aten.neg.default(x)),
    "aten.pad.default": Example((2, 4), lambda x, p: aten.pad.default(x, [1, 3], "constant", None)),
    "aten.permute.default": Example((2, 3, 4), lambda x, p: aten.permute.default(x, [0, 3, 1, 2])),
    "aten.relu.default": Example((5,), lambda x, p: aten.relu.default(x)),
    "aten.reshape.default": Example((3, 4), lambda x, p: aten.reshape.default(x, [-1, 4, 3])),
    "aten.rsub.Scalar": Example((3,), lambda x, p: aten.rsub.Scalar(x, 2.0, 3.0)),
    "aten.rsub.Tensor": Example((3,), lambda x, p: aten.rsub.Tensor(x, p["c"]), {"c": (3,)}),
    "aten.sigmoid.default": Example((5,), lambda x, p: aten.sigmoid.default(x)),
    "aten.silu.default": Example((5,), lambda x, p: aten.silu.default(x)),
    "aten.softmax.int": Example((5,), lambda x, p: aten.softmax.int(x, -1)),
    "aten.softplus.default": Example((5,), lambda x, p: aten.softplus.default(x, 1, 20)),
    "aten.squeeze.default": Example((3, 1, 4), lambda x, p: aten.squeeze.default(x)),
    "aten.squeeze.dim": Example((3, 1, 4), lambda x, p: aten.squeeze.dim(x, 2)),
    "aten.squeeze.dims": Example((1, 3, 1), lambda x, p: aten.squeeze.dims(x, [1, 3])),
    "aten.sum.dim_IntList": Example(
        (3, 4, 5),
        lambda x, p: torch.cat(
            [aten.sum.dim_IntList(x, [2, 3]), aten.sum.dim_IntList(x, [1], True).flatten(1)], 1
        ),
    ),
    "aten.sub.Scalar": Example((3,), lambda x, p: aten.sub.Scalar(x, 1.5)),
    "aten.sub.Tensor": Example((3,), lambda x, p: aten.sub.Tensor(torch.tanh(x), x, alpha=0.5)),
    "aten.tanh.default": Example((5,), lambda x, p: aten.tanh.default(x)),
    "aten.transpose.int": Example((2, 3, 4), lambda x, p: aten.transpose.int(x, -1, 1)),
    "aten.unsqueeze.default": Example((3, 4), lambda x, p: aten.unsqueeze.default(x, -1)),
    "aten.upsample_bilinear2d.default": Example(
        (2, 3, 4), lambda x, p: aten.upsample_bilinear2d.default(x, [6, 8], False)
    ),
    "aten.upsample_bilinear2d.vec": Example(
        (2, 3, 4), lambda x, p: aten.upsample_bilinear2d.vec(x, [5, 7], True, None)
    ),
    "aten.upsample_linear1d.default": Example(
        (2, 4), lambda x, p: aten.upsample_linear1d.default(x, [16], False)
    ),
    "aten.upsample_linear1d.vec": Example(
        (2, 4), lambda x, p: aten.upsample_linear1d.vec(x, None, False, [2.0])
    ),
    "aten.upsample_nearest1d.default": Example((2, 3), lambda x, p: aten.upsample_nearest1d.default(x, [9])),
    "aten.upsample_nearest1d.vec": Example((2, 3), lambda x, p: aten.upsample_nearest1d.vec(x, None, [2.0])),
    "aten.upsample_nearest2d.default": Example(
        (2, 3, 4), lambda x, p: aten.upsample_nearest2d.default(x, [6, 12])
    ),
    "aten.upsample_nearest2d.vec": Example(
        (2, 3, 4), lambda x, p: aten.upsample_nearest2d.vec(x, None, [2.0, 2.0])
    ),
    "aten.view.default": Example((3, 4), lambda x, p: aten.view.default(x, [2, 4, 3])),
    "aten.view_copy.default": Example((3, 4), lambda x, p: aten.view_copy.default(x, [2, 12])),
}


class OneOp(nn.Module):
    def __init__(self, ex: Example) -> None:
        super().__init__()
        self.fn = ex.fn
        g = torch.Generator().manual_seed(3)
        self.p = nn.ParameterDict(
            {k: nn.Parameter(torch.randn(s, generator=g), requires_grad=False) for k, s in ex.params.items()}
        )

    def forward(self, x: T) -> T:
        return self.fn(x, dict(self.p.items()))


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_every_converter_has_an_example() -> None:
    assert sorted(ATEN_OPS.keys()) == sorted(EXAMPLES)


def test_registering_a_name_twice_raises() -> None:
    with pytest.raises(KeyError, match="already registered"):
        aten_op("aten.relu.default")(lambda ctx, args: args[0])


@pytest.mark.parametrize("name", sorted(ATEN_OPS.keys()))
def test_converter_matches_the_op(name: str) -> None:
    ex = EXAMPLES[name]
    module = OneOp(ex).eval()
    x = torch.randn(2, *ex.shape, generator=torch.Generator().manual_seed(11))
    ep = torch.export.export(module, (x,))
    if name not in {op_name(n.target) for n in ep.graph.nodes}:
        ep = ep.run_decompositions()
    assert name in {op_name(n.target) for n in ep.graph.nodes}, (
        f"{name} does not appear in the exported graph"
    )
    graph = exported_to_graph(ep, ex.shape, 2, allow_unsupported=False)
    with torch.no_grad():
        want = module(x)
        got = graph.forward(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_docs_table_is_generated_from_the_registry() -> None:
    from pathlib import Path

    from speccert.importers.aten_ops import support_markdown

    doc = (Path(__file__).resolve().parents[1] / "docs" / "pytorch.md").read_text()
    table = doc.split("<!-- aten-ops:begin -->\n")[1].split("<!-- aten-ops:end -->")[0]
    assert table == support_markdown(), "regenerate the table in docs/pytorch.md from support_markdown()"
