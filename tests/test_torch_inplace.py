"""In-place ATen ops read as functional ops only when no other node can see the write; the fast .pt2 read."""

from __future__ import annotations

import typing
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.fx import Graph, Node

from speccert.importers.pt2_archive import load_exported
from speccert.importers.torch_import import load_torch_file
from speccert.importers.torch_inplace import _local_mutations, functional_copy, functional_twin
from speccert.importers.torch_module import _has_mutation, convert
from speccert.ir.graph import ModelSource

aten = torch.ops.aten


def _graph(body: Callable[[Graph, Node], Node]) -> Graph:
    g = Graph()
    x = g.placeholder("x")
    g.output(body(g, x))
    return g


def _call(g: Graph, op: typing.Any, *args: typing.Any) -> Node:
    return g.call_function(op, args)


def test_twins_of_in_place_ops() -> None:
    assert functional_twin(aten.relu_.default) is aten.relu.default
    assert functional_twin(aten.add_.Tensor) is aten.add.Tensor
    assert functional_twin(aten.hardtanh_.default) is aten.hardtanh.default
    assert functional_twin(aten.relu.default) is None  # not in place
    assert functional_twin(aten.add.out) is None  # writes its `out` argument, not its first


def test_local_mutation_is_retargeted() -> None:
    def body(g: Graph, x: Node) -> Node:
        t = _call(g, aten.mul.Tensor, x, 2.0)
        s = _call(g, aten.sum.default, t)  # read *before* the write: sees the old value, as it should
        r = _call(g, aten.relu_.default, t)
        a = _call(g, aten.add_.Tensor, r, x)  # a chain of writes on one fresh tensor
        return _call(g, aten.add.Tensor, a, s)

    swaps = _local_mutations(_graph(body))
    assert swaps is not None
    assert sorted(swaps.values(), key=str) == [aten.add.Tensor, aten.relu.default]


@pytest.mark.parametrize(
    "case",
    [
        "read after the write",
        "input written",
        "view of the written tensor",
        "written view",
        "reader before a write",
    ],
)
def test_visible_mutation_is_not_retargeted(case: str) -> None:
    # Each program would compute something else with relu in place of relu_: the caller must functionalise.
    def body(g: Graph, x: Node) -> Node:
        t = _call(g, aten.mul.Tensor, x, 2.0)
        if case == "read after the write":
            return _call(g, aten.add.Tensor, _call(g, aten.relu_.default, t), t)
        if case == "input written":
            return _call(g, aten.relu_.default, x)
        if case == "view of the written tensor":
            v = _call(g, aten.view.default, t, [-1])
            r = _call(g, aten.relu_.default, t)
            return _call(g, aten.add.Tensor, _call(g, aten.sum.default, r), _call(g, aten.sum.default, v))
        if case == "written view":
            return _call(g, aten.relu_.default, _call(g, aten.view.default, t, [-1]))
        r = _call(g, aten.relu_.default, t)  # the second write's input was read by the first write
        a = _call(g, aten.add_.Tensor, t, 1.0)
        return _call(g, aten.add.Tensor, r, a)

    assert _local_mutations(_graph(body)) is None


class _ConvReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.lin = nn.Linear(3 * 16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.relu(self.conv(x)).flatten(1))


def _with_relu_in_place(ep: torch.export.ExportedProgram) -> int:
    """Make the program as saved from `nn.ReLU(inplace=True)` (torch 2.13 exports functional ops)."""
    n = 0
    for node in ep.graph.nodes:
        if node.target is aten.relu.default:
            node.target = aten.relu_.default
            n += 1
    return n


def test_program_with_in_place_relu_converts_without_retrace() -> None:
    torch.manual_seed(0)
    m = _ConvReLU().eval()
    x = torch.randn(2, 2, 4, 4)
    ep = torch.export.export(m, (x,), strict=False)
    assert _with_relu_in_place(ep) == 1 and _has_mutation(ep)
    fast = functional_copy(ep)
    assert fast is not None and not _has_mutation(fast)
    assert _has_mutation(ep)  # the program as saved is untouched (the faithfulness check runs it)
    g = convert(ep, (2, 4, 4), 2, False, ModelSource("<test>", "python"))
    with torch.no_grad():
        torch.testing.assert_close(g.forward(x), m(x), rtol=1e-5, atol=1e-6)


def test_pt2_fast_read_matches_torch_and_restores_typing(tmp_path: Path) -> None:
    from torch._export.serde import serialize

    torch.manual_seed(0)
    m = _ConvReLU().eval()
    x = torch.randn(2, 2, 4, 4)
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(m, (x,), strict=False), str(path))
    ours, theirs = load_exported(str(path)), torch.export.load(str(path))
    assert serialize.typing is typing
    assert ours.graph_module.code == theirs.graph_module.code
    assert ours.state_dict.keys() == theirs.state_dict.keys()
    for k, v in ours.state_dict.items():
        assert torch.equal(v, theirs.state_dict[k])
    g = load_torch_file(path)  # the graph shares the archive's weights: nothing else holds them
    with torch.no_grad():
        torch.testing.assert_close(g.forward(x), m(x), rtol=1e-5, atol=1e-6)
