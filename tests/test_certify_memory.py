"""certify's memory on a shufflenet-like head: the pairwise-distance loops stay in bounded memory.

`speccert certify` of torchvision's shufflenet_v2 at 224x224 (1000 classes behind a 1024-channel map)
peaked at 8.1-22 GB resident (docs/architectures.md): the pairwise certificate formed W_y - W for every y
(1000 temporaries of 8 MB, kept by glibc's heap as holes between the small results) and the
margin-aware one formed T_y - T for every y over the 1000 x 50176 tail rows (1000 temporaries of
0.4 GB, 148 s). speccert.bounds.row_distances computes the same numbers through one small scratch
buffer. These tests pin both the numbers (bitwise those of the one-line expressions) and the memory
(the bytes torch allocates while the certificates are built, counted by torch's profiler), on a graph
with the same structure (channel shuffle, depthwise conv, global average pool, wide head) that needs
no torchvision.
"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import speccert.bounds.row_distances as row_distances
from speccert.bounds.certificate import CertContext
from speccert.bounds.certificates.margin_aware import MarginAware
from speccert.bounds.certificates.pairwise_margin import PairwiseMargin
from speccert.bounds.certificates.second_order import curvature_matrix
from speccert.bounds.lipschitz import lipschitz_bound
from speccert.ir import INPUT, Activation, Conv, GlobalAvgPool, Graph, Linear, Node, Reshape, Transpose

D = torch.float64
CLASSES, HEAD, MAP = 400, 32, 4  # head rows 400 x 32; margin-aware tail rows 400 x (32*4*4)


def _conv(cin: int, cout: int, k: int, groups: int = 1) -> Conv:
    w = torch.randn(cout, cin // groups, k, k, dtype=D) / (cin // groups * k * k) ** 0.5
    pad = ((k // 2, k // 2), (k // 2, k // 2))
    return Conv(w, torch.randn(cout, dtype=D) * 0.1, (1, 1), pad, (1, 1), groups)


def shuffle_net(act: str = "relu") -> Graph:
    """1x1 conv, channel shuffle (Reshape, Transpose, Reshape), depthwise 3x3, 1x1 conv, act, global
    average pool, a wide Linear head: shufflenet_v2's structure at toy size."""
    torch.manual_seed(0)
    return Graph(
        (4, MAP, MAP),
        [
            Node("c1", _conv(4, 8, 1), (INPUT,)),
            Node("a1", Activation(act), ("c1",)),
            Node("split", Reshape((2, 4, MAP, MAP)), ("a1",)),
            Node("swap", Transpose((1, 0, 2, 3)), ("split",)),
            Node("merge", Reshape((8, MAP, MAP)), ("swap",)),
            Node("dw", _conv(8, 8, 3, groups=8), ("merge",)),
            Node("c2", _conv(8, HEAD, 1), ("dw",)),
            Node("a2", Activation(act), ("c2",)),
            Node("gap", GlobalAvgPool(), ("a2",)),
            Node("flat", Reshape((HEAD,)), ("gap",)),
            Node(
                "fc",
                Linear(torch.randn(CLASSES, HEAD, dtype=D) / HEAD**0.5, torch.zeros(CLASSES, dtype=D)),
                ("flat",),
            ),
        ],
        dtype=D,
    )


def _cdist(rows: torch.Tensor) -> torch.Tensor:
    """Euclidean distances by torch.cdist's direct route (its matrix-product route cancels)."""
    return torch.cdist(rows, rows, compute_mode="donot_use_mm_for_euclid_dist")


def _allocated_bytes(fn: object) -> tuple[int, object]:
    """Bytes torch allocates on the CPU while `fn()` runs (top-level ops, children included once)."""
    assert callable(fn)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    total = sum(
        max(0, e.cpu_memory_usage) for e in prof.events() if e.name != "[memory]" and e.cpu_parent is None
    )
    return total, out


@pytest.mark.parametrize("shape", [(1, 5), (7, 3), (50, 64), (13, 5000)])
@pytest.mark.parametrize("scratch_rows", [1, 3, 1000])
@pytest.mark.parametrize("transposed", [False, True])
def test_chunked_distances_are_bitwise_the_one_line_expressions(
    monkeypatch: pytest.MonkeyPatch, shape: tuple[int, int], scratch_rows: int, transposed: bool
) -> None:
    """Same arithmetic per entry, whatever the chunking and the layout (a transposed weight, as an
    ONNX Gemm without transB gives): the certificates' numbers cannot move."""
    torch.manual_seed(1)
    rows = (
        torch.randn(*shape, dtype=D) * torch.rand(shape[0], 1, dtype=D) * 10.0 ** torch.randint(-3, 4, (1,))
    )
    if transposed:
        rows = rows.t().contiguous().t()
    rows[0] = rows[-1]  # a repeated row: a zero distance
    monkeypatch.setattr(row_distances, "SCRATCH_BYTES", scratch_rows * shape[1] * 8)
    n = rows.shape[0]
    squares = torch.stack([(rows[i] - rows).square().sum(-1) for i in range(n)])
    norms = torch.stack([(rows[i] - rows).norm(dim=1) for i in range(n)])
    maxabs = torch.stack([(rows[i] - rows).abs().amax(-1) for i in range(n)])
    assert torch.equal(row_distances.squared_distances(rows), squares)
    assert torch.equal(row_distances.distances(rows), norms)
    assert torch.equal(row_distances.max_abs_differences(rows), maxabs)
    # ... and they are distances: ground truth from torch.cdist (another algorithm), to rounding
    torch.testing.assert_close(norms, _cdist(rows), rtol=1e-12, atol=1e-12 * float(rows.abs().max()))


def test_certificates_of_a_shufflenet_like_head_allocate_little() -> None:
    """Building the pairwise and margin-aware certificates allocates O(rows) bytes, not O(classes x rows).

    Sizes here: head W 400x32 (0.1 MB), tail rows T 400x512 (1.6 MB), distance matrices 400x400 (1.3 MB).
    Measured: 26 MB now (pairwise 5, margin-aware 21); the one-line loops allocated 0.77 GB (400 x (2 x
    0.1 + 1.6) MB of differences) and fail this test.
    """
    g = shuffle_net()
    bound = lipschitz_bound(g, "fantastic4")
    ctx = CertContext(bound, bound.folded, torch.device("cpu"))
    rows_bytes = CLASSES * HEAD * MAP * MAP * 8
    matrix_bytes = CLASSES * CLASSES * 8
    # what the constructors need: the tail rows and their |A| twin with one gradient each, a few
    # distance matrices and the scratch; the old loops: a difference block per class
    budget = 6 * rows_bytes + 8 * matrix_bytes + 2 * row_distances.SCRATCH_BYTES
    old = CLASSES * (2 * CLASSES * HEAD * 8 + CLASSES * HEAD * MAP * MAP * 8)
    assert old > 10 * budget  # the bound below tells the two apart with room to spare

    pairwise_bytes, pairwise = _allocated_bytes(lambda: PairwiseMargin(ctx))
    margin_bytes, margin = _allocated_bytes(lambda: MarginAware(ctx))
    assert pairwise_bytes + margin_bytes < budget, (pairwise_bytes, margin_bytes, budget)

    # the numbers: ||W_y - W_j|| L_u and ||T_y - T_j|| L_a2 against a float64 ground truth by cdist;
    # here T = W (GAP) and ||GAP||_2 = 1/sqrt(16), so both certificates agree up to their allowances
    assert isinstance(pairwise, PairwiseMargin) and isinstance(margin, MarginAware)
    w = g.node("fc").op.weight
    exact = _cdist(w) * bound.node_upper["flat"]
    assert bool((pairwise.denominator >= exact).all())
    torch.testing.assert_close(pairwise.denominator, exact, rtol=1e-12, atol=0.0)
    tail_exact = _cdist(w) / MAP * bound.node_upper["a2"]
    assert bool((margin.denominator >= tail_exact * (1 - 1e-12)).all())
    # (its allowance is partly absolute: gamma(K) times the |T| rows, nonzero on the unused diagonal)
    torch.testing.assert_close(
        margin.denominator, tail_exact, rtol=1e-10, atol=1e-9 * float(tail_exact.max())
    )


def test_second_order_curvature_of_a_smooth_shufflenet_like_head_allocates_little() -> None:
    """The second-order certificate's max |W_y - W_j| and ||W_y - W_j|| matrices, same bound."""
    g = shuffle_net("softplus")
    bound = lipschitz_bound(g, "fantastic4")
    ctx = CertContext(bound, bound.folded, torch.device("cpu"))
    used, k = _allocated_bytes(lambda: curvature_matrix(ctx))
    assert used < 8 * CLASSES * CLASSES * 8 + 2 * row_distances.SCRATCH_BYTES, used
    assert isinstance(k, torch.Tensor) and k.shape == (CLASSES, CLASSES)
    assert bool((k >= 0).all()) and bool(torch.isfinite(k).all())
