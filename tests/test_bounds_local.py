"""Local certificate: sound against strong attacks (checked in onnxruntime), tighter than global."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from certify_nets import D, dead_relu_net
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from speccert.bounds import certify
from speccert.bounds.audit import pgd_l2
from speccert.exporters import save_onnx
from speccert.ir import INPUT, Activation, Add, BatchNorm, Conv, Graph, Linear, MaxPool, Node, Reshape


def relu_mlp(seed: int, d: int, widths: list[int], classes: int) -> Graph:
    gen = torch.Generator().manual_seed(seed)
    nodes, prev, n_in = [], INPUT, d
    for i, w in enumerate(widths):
        weight = torch.randn(w, n_in, generator=gen, dtype=D) * (2.0 / n_in) ** 0.5
        nodes += [
            Node(f"l{i}", Linear(weight, torch.randn(w, generator=gen, dtype=D) * 0.1), (prev,)),
            Node(f"a{i}", Activation("relu"), (f"l{i}",)),
        ]
        prev, n_in = f"a{i}", w
    head = torch.randn(classes, n_in, generator=gen, dtype=D) / n_in**0.5
    nodes.append(Node("out", Linear(head, torch.zeros(classes, dtype=D)), (prev,)))
    return Graph((d,), nodes, dtype=D)


def conv_pool_net(seed: int, c: int, n: int, k: int, pool: int, classes: int) -> Graph:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(c, 1, k, k, generator=gen, dtype=D) / k
    bn = BatchNorm(
        torch.randn(c, generator=gen, dtype=D) * 0.1,
        torch.rand(c, generator=gen, dtype=D) + 0.5,
        torch.rand(c, generator=gen, dtype=D) + 0.5,
        torch.randn(c, generator=gen, dtype=D) * 0.1,
    )
    g = Graph(
        (1, n, n),
        [
            Node(
                "conv",
                Conv(w, torch.randn(c, generator=gen, dtype=D) * 0.1, (1, 1), ((1, 1), (1, 1)), (1, 1)),
                (INPUT,),
            ),
            Node("bn", bn, ("conv",)),
            Node("relu", Activation("relu"), ("bn",)),
            Node("pool", MaxPool((pool, pool), (pool, pool), ((0, 0), (0, 0)), (1, 1)), ("relu",)),
        ],
        dtype=D,
    )
    flat = int(np.prod(g.output_shape))
    hidden = torch.randn(8, flat, generator=gen, dtype=D) * (2.0 / flat) ** 0.5
    head = torch.randn(classes, 8, generator=gen, dtype=D) / 8**0.5
    nodes = g.nodes + [
        Node("flat", Reshape((flat,)), ("pool",)),
        Node("fc", Linear(hidden, torch.randn(8, generator=gen, dtype=D) * 0.1), ("flat",)),
        Node("relu2", Activation("relu"), ("fc",)),
        Node("out", Linear(head, torch.zeros(classes, dtype=D)), ("relu2",)),
    ]
    return Graph((1, n, n), nodes, dtype=D)


def attack_distance(
    g: Graph, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor, onnx: Path
) -> np.ndarray:
    """Smallest L2 distance at which PGD-L2 (restarts) finds a point that onnxruntime misclassifies
    (doubling then bisection on the attack radius); inf where none is found up to 64x `start`."""
    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])

    def adversarial(eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        res = pgd_l2(g, x, y, eps, steps=40, restarts=5, seed=1)
        xa = (x + res.delta).numpy().astype(np.float32)
        pred = sess.run(None, {sess.get_inputs()[0].name: xa})[0].argmax(1)
        return torch.from_numpy(pred != y.numpy()) & res.success, res.delta_norm

    best = torch.full((x.shape[0],), float("inf"), dtype=D)
    lo, hi = start.clone(), start * 64
    ok, dist = adversarial(hi)
    best = torch.where(ok, dist, best)
    for _ in range(6):
        mid = (lo * hi).sqrt()
        ok, dist = adversarial(mid)
        best = torch.where(ok, torch.minimum(best, dist), best)
        lo, hi = torch.where(ok, lo, mid), torch.where(ok, mid, hi)
    return best.numpy()


def check_local(g: Graph, x: torch.Tensor, tmp_path: Path) -> dict[str, np.ndarray]:
    with torch.no_grad():
        y = g.forward(x).argmax(1)
    rep = certify(g, (x, y), eps=[0.1], lower_bound=False, certificates=["all"], audit=x.shape[0])
    local = rep.radii["local"]
    onnx = save_onnx(g.to("cpu", torch.float32), tmp_path / "net.onnx")
    keep = local > 0
    dist = attack_distance(g, x[keep], y[keep], torch.from_numpy(local[keep]), onnx)
    assert np.all(local[keep] <= dist), "an attack beat a local radius: the certificate is wrong"
    assert np.all(local <= rep.radius)
    return rep.radii


shapes = settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MLP_SHAPES = {
    "seed": st.integers(0, 10_000),
    "d": st.integers(2, 10),
    "widths": st.lists(st.integers(3, 20), min_size=1, max_size=3),
    "classes": st.integers(2, 5),
}
POOL_SHAPES = {
    "seed": st.integers(0, 10_000),
    "c": st.integers(1, 4),
    "n": st.integers(4, 8),
    "k": st.integers(1, 3),
    "pool": st.integers(1, 2),
}


@shapes
@given(**MLP_SHAPES)
def test_local_radius_of_relu_mlps_is_sound_and_beats_global(
    seed: int, d: int, widths: list[int], classes: int, tmp_path: Path
) -> None:
    g = relu_mlp(seed, d, widths, classes)
    x = torch.randn(10, d, generator=torch.Generator().manual_seed(seed + 1), dtype=D)
    radii = check_local(g, x, tmp_path)
    assert (
        np.all(radii["local"] >= radii["global"] * (1 - 1e-9) - 1e-12)
        or np.median(radii["local"] / np.maximum(radii["global"], 1e-300)) > 1.0
    )


@shapes
@given(**POOL_SHAPES, classes=st.integers(2, 4))
def test_local_radius_of_conv_maxpool_nets_is_sound(
    seed: int, c: int, n: int, k: int, pool: int, classes: int, tmp_path: Path
) -> None:
    g = conv_pool_net(seed, c, n, k, pool, classes)
    x = torch.randn(8, 1, n, n, generator=torch.Generator().manual_seed(seed + 1), dtype=D)
    check_local(g, x, tmp_path)


def test_local_is_exact_where_no_unit_can_switch() -> None:
    """Tiny margins: every unit is stable on the ball, so the radius is m / ||grad m(x)|| (to 1e-3,
    the bisection's resolution), never above it."""
    g = relu_mlp(5, 6, [8, 8], 3)
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(2), dtype=D)
    xr = x.clone().requires_grad_(True)
    f = g.forward(xr)
    y = f.argmax(1)
    top2 = f.topk(2, dim=1)
    m = top2.values[:, 0] - top2.values[:, 1]
    (gm,) = torch.autograd.grad(m.sum(), xr)
    exact = (m / gm.norm(dim=1)).detach().numpy()
    near = np.argsort(exact)[:20]  # the points closest to a boundary
    rep = certify(g, (x[near], y[near]), eps=[0.1], lower_bound=False, certificates=["local"])
    # the runner-up may not be the closest class, so exact is only an upper bound per point
    assert np.all(rep.radii["local"] <= exact[near] * (1 + 1e-9))
    assert np.median(rep.radii["local"] / exact[near]) > 0.99


@pytest.mark.parametrize("kinds", ["global,local", "global,local,crown"])
def test_certificate_option_of_the_cli(kinds: str, tmp_path: Path) -> None:
    """The kinds asked for run, the report lists them and says which won per point."""
    from tests.test_certify_cli import onnx_classifier, run

    model = onnx_classifier(tmp_path / "m.onnx")
    x = np.random.default_rng(0).random((40, 1, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(40, dtype=np.int64))
    proc = run(model, "--data", tmp_path / "d.npz", "--certificate", kinds, "--json", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["certificate"]["kinds"] == kinds.split(",")
    assert "median gain over global" in proc.stdout and "Best certificate per point:" in proc.stdout
    rows = [r for r in rep["samples"] if r["radius"]]
    last = kinds.split(",")[-1]
    assert rows and all(r["radius"] >= r["radii"][last] >= 0 for r in rows)
    bad = run(model, "--data", tmp_path / "d.npz", "--certificate", "nonsense")
    assert bad.returncode == 2 and "unknown certificate nonsense" in bad.stderr
    assert "Traceback" not in bad.stderr


def residual_net(seed: int, c: int, n: int, act: str, classes: int, downsample: bool) -> Graph:
    """conv -> act -> [conv -> act -> conv] + skip -> act -> flatten -> linear: a residual block whose
    skip is the identity or a strided 1x1 conv (with a strided main branch)."""
    gen = torch.Generator().manual_seed(seed)

    def conv(cin: int, cout: int, k: int, stride: int) -> Conv:
        p = k // 2
        w = torch.randn(cout, cin, k, k, generator=gen, dtype=D) * (1.5 / (cin * k * k)) ** 0.5
        return Conv(
            w, torch.randn(cout, generator=gen, dtype=D) * 0.1, (stride, stride), ((p, p), (p, p)), (1, 1)
        )

    s = 2 if downsample else 1
    nodes = [
        Node("c0", conv(1, c, 3, 1), (INPUT,)),
        Node("a0", Activation(act), ("c0",)),
        Node("c1", conv(c, c, 3, s), ("a0",)),
        Node("a1", Activation(act), ("c1",)),
        Node("c2", conv(c, c, 3, 1), ("a1",)),
    ]
    skip = "a0"
    if downsample:
        nodes.append(Node("sc", conv(c, c, 1, s), ("a0",)))
        skip = "sc"
    nodes += [Node("add", Add(), ("c2", skip)), Node("a2", Activation(act), ("add",))]
    g = Graph((1, n, n), nodes, dtype=D)
    flat = int(np.prod(g.output_shape))
    head = torch.randn(classes, flat, generator=gen, dtype=D) / flat**0.5
    nodes += [
        Node("flat", Reshape((flat,)), ("a2",)),
        Node("out", Linear(head, torch.randn(classes, generator=gen, dtype=D) * 0.1), ("flat",)),
    ]
    return Graph((1, n, n), nodes, dtype=D)


def smooth_mlp(seed: int, d: int, widths: list[int], classes: int, act: str) -> Graph:
    g = relu_mlp(seed, d, widths, classes)
    nodes = [Node(n.name, Activation(act), n.inputs) if n.op_type == "Activation" else n for n in g.nodes]
    return Graph((d,), nodes, dtype=D)


def minimal_norm_distance(g: Graph, x: torch.Tensor, y: torch.Tensor, onnx: Path) -> np.ndarray:
    """A minimal-norm attack: walk along -grad of the margin to the runner-up (DeepFool steps, in
    float64 on the IR), keep the first iterate onnxruntime misclassifies, its distance; inf if none."""
    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    best = np.full(x.shape[0], np.inf)
    xa = x.clone()
    for _ in range(30):
        xr = xa.clone().requires_grad_(True)
        f = g.forward(xr)
        other = f.scatter(1, y[:, None], -math.inf).argmax(1)
        m = f.gather(1, y[:, None])[:, 0] - f.gather(1, other[:, None])[:, 0]
        (grad,) = torch.autograd.grad(m.sum(), xr)
        gn = grad.flatten(1).norm(dim=1).clamp_min(1e-12).reshape(-1, *[1] * (x.dim() - 1))
        step = (m.detach().clamp_min(0) + 1e-4).reshape(gn.shape) * 1.05 / gn
        xa = (xa - step * grad / gn).detach()
        pred = sess.run(None, {sess.get_inputs()[0].name: xa.numpy().astype(np.float32)})[0].argmax(1)
        dist = (xa - x).flatten(1).norm(dim=1).numpy()
        best = np.where(pred != y.numpy(), np.minimum(best, dist), best)
    return best


def check_local_strong(g: Graph, x: torch.Tensor, tmp_path: Path) -> dict[str, np.ndarray]:
    """check_local (PGD-L2 with restarts, bisection on the attack radius) plus a minimal-norm attack."""
    radii = check_local(g, x, tmp_path)
    with torch.no_grad():
        y = g.forward(x).argmax(1)
    dist = minimal_norm_distance(g, x, y, tmp_path / "net.onnx")
    assert np.all(radii["local"] <= dist), "a minimal-norm attack beat a local radius"
    return radii


@shapes
@given(
    seed=st.integers(0, 10_000),
    c=st.integers(1, 3),
    n=st.integers(4, 7),
    act=st.sampled_from(["relu", "softplus", "tanh"]),
    downsample=st.booleans(),
)
def test_local_radius_of_residual_nets_is_sound(
    seed: int, c: int, n: int, act: str, downsample: bool, tmp_path: Path
) -> None:
    g = residual_net(seed, c, n, act, 3, downsample)
    x = torch.randn(6, 1, n, n, generator=torch.Generator().manual_seed(seed + 1), dtype=D)
    radii = check_local_strong(g, x, tmp_path)
    assert np.median(radii["local"]) > 0, "the local certificate proved nothing on a residual net"


@shapes
@given(
    seed=st.integers(0, 10_000),
    d=st.integers(2, 8),
    widths=st.lists(st.integers(3, 16), min_size=1, max_size=3),
    act=st.sampled_from(["sigmoid", "tanh", "softplus", "silu", "gelu", "elu"]),
)
def test_local_radius_of_smooth_mlps_is_sound_and_tighter(
    seed: int, d: int, widths: list[int], act: str, tmp_path: Path
) -> None:
    g = smooth_mlp(seed, d, widths, 3, act)
    x = torch.randn(8, d, generator=torch.Generator().manual_seed(seed + 1), dtype=D)
    radii = check_local_strong(g, x, tmp_path)
    old = np.maximum(radii["global"], radii["pairwise"])
    assert np.median(radii["local"]) > np.median(old), "local should beat the product bound on small nets"


def test_local_on_a_smooth_net_approaches_the_gradient_norm() -> None:
    """Near the boundary the ball is tiny, slopes barely vary: the radius tends to m / ||grad m(x)||."""
    g = smooth_mlp(3, 6, [10, 10], 3, "tanh")
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(4), dtype=D)
    xr = x.clone().requires_grad_(True)
    f = g.forward(xr)
    y = f.argmax(1)
    top2 = f.topk(2, dim=1)
    m = top2.values[:, 0] - top2.values[:, 1]
    (gm,) = torch.autograd.grad(m.sum(), xr)
    first_order = (m / gm.norm(dim=1)).detach().numpy()
    near = np.argsort(first_order)[:3]  # radii ~1e-3: the slope ranges over the ball are tight
    rep = certify(g, (x[near], y[near]), eps=[0.1], lower_bound=False, certificates=["local"])
    assert np.all(rep.radii["local"] / first_order[near] > 0.95)


def test_local_certifies_a_margin_that_is_constant_near_x() -> None:
    """Every ReLU dead at x (biases -5): the logits equal the output bias on the ball of radius
    d = min_i (-z_i) / ||w_i||, so L(0) = 0 and m / L(0) is infinite. The search must still test finite
    radii: each point gets at least d / 10, and never more than where a unit can first switch on plus
    the output layer's own reach (checked by sampling the margin on the certified sphere)."""
    g, x, dead = dead_relu_net()
    y = torch.zeros(8, dtype=torch.int64)
    rep = certify(g, (x, y), eps=[0.1], lower_bound=False, certificates=["local"])
    radii = rep.radii["local"]
    assert np.all(radii >= dead / 10), "local gave up on a locally constant margin"
    d = torch.randn(8, 512, 6, generator=torch.Generator().manual_seed(5), dtype=D)
    on_sphere = (
        x[:, None, :] + d / d.norm(dim=2, keepdim=True) * torch.as_tensor(radii)[:, None, None] * 0.999
    )
    f = g.forward(on_sphere.reshape(-1, 6)).reshape(8, 512, 3)
    assert bool((f[..., 0] > f[..., 1:].amax(-1)).all()), "a sampled point inside a certified radius flips"
