"""MaxMin / GroupSort / FullSort (issue 15): the Sort and Extremum rules are sound against gradient
ascent on the Jacobian norm, the ways torch code and the 1-Lipschitz libraries write them import as one
Sort through ONNX and .pt2 (the load-time check compares with onnxruntime / torch), and the global bound
of a GroupSort net is exactly the product of its linear layers' bounds."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st
from quotient_ascent import ascent

import speccert
from speccert.bounds import certify, lipschitz_bound
from speccert.importers.sorting import fuse_sorts
from speccert.ir import INPUT, Concat, Extremum, Graph, Linear, Node, Reshape, Slice, Sort

D = torch.float64


def _sort_net(seed: int, n: int, group: int, strided: bool, descending: bool) -> Graph:
    gen = torch.Generator().manual_seed(seed)
    w1 = torch.randn(n, 5, generator=gen, dtype=D)
    w2 = torch.randn(3, n, generator=gen, dtype=D)
    split = (group, n // group) if strided else (n // group, group)
    return Graph(
        (5,),
        [
            Node("l1", Linear(w1, torch.randn(n, generator=gen, dtype=D)), (INPUT,)),
            Node("r1", Reshape(split), ("l1",)),
            Node("sort", Sort(axis=0 if strided else 1, descending=descending), ("r1",)),
            Node("r2", Reshape((n,)), ("sort",)),
            Node("l2", Linear(w2, None), ("r2",)),
        ],
        dtype=D,
    )


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 1000),
    groups=st.integers(1, 4),
    group=st.sampled_from([2, 3, 4]),
    strided=st.booleans(),
    descending=st.booleans(),
)
def test_sort_rule_is_exactly_the_product_and_coversascent(
    seed: int, groups: int, group: int, strided: bool, descending: bool
) -> None:
    g = _sort_net(seed, groups * group, group, strided, descending)
    lb = lipschitz_bound(g, method="exact")
    s1 = float(torch.linalg.matrix_norm(g.node("l1").op.weight, ord=2))
    s2 = float(torch.linalg.matrix_norm(g.node("l2").op.weight, ord=2))
    assert lb.upper == pytest.approx(s1 * s2, rel=1e-9)  # factor 1: nothing added by the Sort
    assert lb.upper >= s1 * s2
    x0 = torch.randn(5, generator=torch.Generator().manual_seed(seed), dtype=D)
    assert ascent(lambda z: g.forward(z[None])[0], x0) <= lb.upper


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 1000), is_max=st.booleans())
def test_extremum_hypot_rule_coversascent(seed: int, is_max: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    wa, wb = torch.randn(4, 3, generator=gen, dtype=D), 3 * torch.randn(4, 3, generator=gen, dtype=D)
    g = Graph(
        (3,),
        [
            Node("a", Linear(wa, None), (INPUT,)),
            Node("b", Linear(wb, None), (INPUT,)),
            Node("m", Extremum(is_max=is_max), ("a", "b")),
        ],
        dtype=D,
    )
    lb = lipschitz_bound(g, method="exact")
    sa, sb = (float(torch.linalg.matrix_norm(w, ord=2)) for w in (wa, wb))
    assert lb.upper == pytest.approx(math.hypot(sa, sb), rel=1e-9)
    x0 = torch.randn(3, generator=gen, dtype=D)
    assert ascent(lambda z: g.forward(z[None])[0], x0) <= lb.upper


# ---- how torch code and the libraries write them (re-implemented here: no extra test dependency) --------
class DeelMaxMin(nn.Module):  # deel-torchlip MaxMin: cat(relu(x), relu(-x)), a CReLU
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((torch.relu(x), torch.relu(-x)), dim=1)


class DeelGroupSort(nn.Module):  # deel-torchlip group_sort(x, g) along channels
    def __init__(self, group: int | None) -> None:
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.group or x.shape[1]
        r = x.view(x.shape[0], x.shape[1] // g, g, *x.shape[2:])
        if g == 2:
            a, b = torch.min(r, 2, keepdim=True)[0], torch.max(r, 2, keepdim=True)[0]
            return torch.cat([a, b], dim=2).view(x.shape)
        return torch.sort(r, dim=2)[0].reshape(x.shape)


class HalvesMaxMin(nn.Module):  # orthogonium MaxMin: max and min of the two halves
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.split(x.shape[1] // 2, 1)
        return torch.cat([torch.max(a, b), torch.min(a, b)], dim=1)


ACTS = {
    "crelu": (DeelMaxMin, 2),
    "groupsort2": (lambda: DeelGroupSort(2), 1),
    "groupsort4": (lambda: DeelGroupSort(4), 1),
    "fullsort": (lambda: DeelGroupSort(None), 1),
    "halves": (HalvesMaxMin, 1),
}


def _conv_net(act: str) -> nn.Module:
    make, mult = ACTS[act]
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1), make(), nn.Flatten(), nn.Linear(8 * mult * 16, 10)
    ).eval()


def _export(m: nn.Module, route: str, tmp_path: Path) -> Path:
    x = torch.randn(1, 2, 4, 4)
    if route == "pt2":
        p = tmp_path / "m.pt2"
        torch.export.save(torch.export.export(m, (x,)), str(p))
    else:
        p = tmp_path / "m.onnx"
        torch.onnx.export(m, (x,), str(p), dynamo=False, opset_version=17)
    return p


@pytest.mark.parametrize("route", ["onnx", "pt2"])
@pytest.mark.parametrize("act", sorted(ACTS))
def test_library_activations_import_as_one_sort_with_the_product_bound(
    act: str, route: str, tmp_path: Path
) -> None:
    m = _conv_net(act)
    g = speccert.load(_export(m, route, tmp_path))  # the faithfulness check runs at load
    kinds = [n.op_type for n in g.nodes]
    assert kinds.count("Sort") == 1 and "Extremum" not in kinds and "Concat" not in kinds
    x = torch.randn(6, 2, 4, 4)
    with torch.no_grad():
        assert torch.allclose(g.forward(x), m(x), atol=1e-5)
    lb = lipschitz_bound(g, method="exact")
    product = math.prod(row.upper.value for row in lb.layers)
    assert lb.upper == pytest.approx(product, rel=1e-9)  # exactly the product of the linear norms


def test_unmatched_halves_are_not_fused_and_stay_sound() -> None:
    # max(u[:2], u[2:]) next to min(u[:2], v[2:]) is no sort: the hypot rules stay (2 L or so).
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(4, 3, generator=gen, dtype=D)
    v = torch.randn(4, 3, generator=gen, dtype=D)
    nodes = [
        Node("u", Linear(w, None), (INPUT,)),
        Node("v", Linear(v, None), (INPUT,)),
        Node("ua", Slice(axis=0, start=0, stop=2), ("u",)),
        Node("ub", Slice(axis=0, start=2, stop=4), ("u",)),
        Node("vb", Slice(axis=0, start=2, stop=4), ("v",)),
        Node("mx", Extremum(is_max=True), ("ua", "ub")),
        Node("mn", Extremum(is_max=False), ("ua", "vb")),
        Node("cat", Concat(axis=0), ("mx", "mn")),
    ]
    g = Graph((3,), nodes, dtype=D)
    assert fuse_sorts(g) is g
    lb = lipschitz_bound(g, method="exact")
    x0 = torch.randn(3, generator=gen, dtype=D)
    assert ascent(lambda z: g.forward(z[None])[0], x0) <= lb.upper


def test_certify_a_groupsort_net_falls_back_soundly_for_local_kinds() -> None:
    # groups of three: local/crown bound MaxMin (groups of two, tests/test_bounds_local_sort.py) only
    g = _sort_net(3, 9, 3, strided=False, descending=False)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=gen, dtype=D)
    with torch.no_grad():
        y = g.forward(x).argmax(1)
    rep = certify(g, (x.numpy(), y.numpy()), eps=[0.05], lower_bound=False, certificates=["all"], audit=40)
    assert rep.audit is not None and rep.audit.points > 0 and rep.audit.successes == 0
    assert "local" not in set(rep.kind.tolist())  # the local kind does not handle Sort: not applicable
    assert float(rep.radius.max()) > 0


@pytest.mark.parametrize("act", ["crelu", "halves", "groupsort4"])
def test_sort_graphs_export_to_onnx_and_reload_identically(act: str, tmp_path: Path) -> None:
    # finetune saves in the input's format: a Sort / Extremum graph must round-trip through ONNX
    from speccert.exporters import save_onnx

    g = speccert.load(_export(_conv_net(act), "pt2", tmp_path))
    back = speccert.load(save_onnx(g, tmp_path / "back.onnx"))  # checked against onnxruntime at load
    assert [n.op_type for n in back.nodes].count("Sort") == 1
    assert lipschitz_bound(back, method="exact").upper == pytest.approx(
        lipschitz_bound(g, method="exact").upper, rel=1e-12
    )


def test_certify_layer_table_has_a_rule_row_per_sort() -> None:
    # The table a user reads lists every factor the bound multiplies: the Sort's 1 too, in graph order.
    g = _sort_net(5, 6, 3, strided=False, descending=True)
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(1), dtype=D)
    with torch.no_grad():
        y = g.forward(x).argmax(1)
    rep = certify(g, (x.numpy(), y.numpy()), eps=[0.05], lower_bound=False)
    rows = rep.to_dict()["layers"]
    names = [r["name"] for r in rows]
    assert names.index("l1") < names.index("sort") < names.index("l2")
    sort = rows[names.index("sort")]
    assert (sort["upper"], sort["lower"], sort["method"]) == (1.0, 1.0, "rule")
    assert sort["op"] == "Sort axis 1 descending" and sort["in_shape"] == [2, 3]
    assert math.prod(r["upper"] for r in rows) == pytest.approx(rep.lipschitz_upper, rel=1e-9)
