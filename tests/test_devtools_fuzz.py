"""The soundness fuzzer (speccert.devtools.fuzz): a few seeds of random architectures pass every check,
and its checks catch a radius above what a gradient or a sampled point proves."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest
import torch
from torch import nn

from speccert.devtools import fuzz
from speccert.ir import fold_linear

# seeds whose networks cover MaxMin, BatchNorm, concatenation, residual, pooling, grouped and dilated
# convolutions, normalisation, smooth activations, zero padding, a global pool, a channels-last input, a
# Softmax output and the .pt2 route (checked below, so a changed grammar is noticed)
SEEDS = [4, 9, 0, 1, 7, 20, 8, 14]


def test_seeds_cover_the_grammar() -> None:
    text = " ".join("; ".join(fuzz.draw(s).layers) for s in SEEDS)
    parts = (
        "maxmin",
        " bn",
        "concat",
        "residual",
        "maxpool",
        "avgpool",
        "g3",
        "d2",
        "normalize",
        "elu",
        "prelu(",
        "ceil nopad",
        "max(conv3",
    )
    for part in (*parts, "zeropad", "global avgpool", "nhwc", "softmax", "as pt2", "as onnx"):
        assert part in text, part


@pytest.mark.parametrize("seed", SEEDS)
def test_random_architectures_pass_every_check(seed: int) -> None:
    assert fuzz.check(seed) == []


def _linear_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).double().eval()


def test_lipschitz_radius_check_flags_a_radius_one_percent_too_large() -> None:
    """On a linear net the margin's gradient is its Lipschitz constant: the exact pairwise radius passes,
    1% more does not."""
    net = _linear_net()
    x = torch.rand(10, 1, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        logits = net(x)
    y = logits.argmax(1)
    w = net[1].weight.detach()
    pair = (w.unsqueeze(1) - w.unsqueeze(0)).norm(dim=2)
    exact = np.array(
        [
            min(float(logits[i, y[i]] - logits[i, j]) / float(pair[y[i], j]) for j in range(3) if j != y[i])
            for i in range(10)
        ]
    )
    assert fuzz._lipschitz_radii({"pairwise": exact}, logits, y, pair) == []
    assert len(fuzz._lipschitz_radii({"pairwise": exact * 1.01}, logits, y, pair)) == 10


def test_sampling_check_flags_a_radius_past_the_boundary() -> None:
    net = _linear_net()
    x = torch.rand(6, 1, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        y = net(x).argmax(1)
    gen = torch.Generator().manual_seed(0)
    assert fuzz._sample_inside(net, x, y, [1e-6] * 6, gen) == []
    assert len(fuzz._sample_inside(net, x, y, [1e3] * 6, gen)) == 6


def test_per_layer_check_flags_a_bound_a_billionth_too_small(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check 4 has no slack: a `dense` upper bound shrunk by 1e-9 relative is caught on a drawn network
    (the float32 fold of BatchNorm it found was ~3e-8); the honest bounds pass."""
    import speccert
    from speccert.norms import METHODS, UpperBound, load_methods

    load_methods()
    dense = METHODS.get("dense")
    d = fuzz.draw(30)  # normalisation, a conv with BatchNorm, a grouped conv, a residual block
    with tempfile.TemporaryDirectory() as tmp:
        g = speccert.load(fuzz._write(d, tmp))
    x = torch.rand(4, *d.input_shape, dtype=torch.float64)
    g64 = g.to("cpu", torch.float64)
    folded = fold_linear(g64)
    assert fuzz._per_layer(g64, folded, x) == []
    compute = type(dense).compute

    def shrunk(self, layer, ctx):  # noqa: ANN001, ANN202
        return [
            UpperBound(r.value * (1 - 1e-9), r.method) if isinstance(r, UpperBound) else r
            for r in compute(self, layer, ctx)
        ]

    monkeypatch.setattr(type(dense), "compute", shrunk)
    found = fuzz._per_layer(g64, folded, x)
    assert found and all("below" in f for f in found)


def test_scale_constant_check_flags_a_slope_constant_below_the_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check 5 reads hardswish's slope peak (1.5 as x -> 3 from below) on its grid: the registered 1.5
    passes, 1.49 is flagged, and so is a curvature constant below tanh's 0.7698."""
    import dataclasses

    import speccert
    from speccert.ir.activations import ACTIVATIONS

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(4, 5), nn.Hardswish(), nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 3)
    )
    d = fuzz.Drawn(net.eval(), (1, 2, 2), ["hardswish, tanh"], net)
    with tempfile.TemporaryDirectory() as tmp:
        g = speccert.load(fuzz._write(d, tmp))
    x = torch.rand(4, 1, 2, 2, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    folded = fold_linear(g.to("cpu", torch.float64))
    assert fuzz._scale_constants(folded, x, gen) == []
    for name, field, value in (("hardswish", "lipschitz", 1.49), ("tanh", "curvature", 0.76)):
        spec = ACTIVATIONS.get(name)
        patched = dataclasses.replace(spec, **{field: lambda a, v=value: v})
        monkeypatch.setitem(ACTIVATIONS._entries, name, patched)
        found = fuzz._scale_constants(folded, x, gen)
        assert len(found) == 1 and name in found[0], found
        assert ("curvature" in found[0]) == (field == "curvature")
        monkeypatch.undo()
