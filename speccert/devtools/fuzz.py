"""Soundness fuzzing: random small PyTorch classifiers, exported to ONNX, imported and certified, each
certificate attacked.

Each seed draws a network from a small grammar (input normalisation, Conv with random kernel / stride /
padding / dilation / groups, BatchNorm with random statistics, activations, max / average pooling,
residual additions, channel concatenations, a Linear head) and checks, against ground truth computed
independently of speccert's bounds:

1. import: onnxruntime's logits on the ONNX file equal the imported graph's (the certified function is
   the file's);
2. the global bound: L upper >= the largest exact Jacobian norm ||J(x)||_2 found by a random ascent on
   the torch model in float64 (a true lower bound on the Lipschitz constant), and >= difference quotients;
3. the certificates: every point's certified radius (global, pairwise, margin-aware; with --local also
   the local and crown kinds) survives a PGD-L2 attack at that radius (certify's own audit, which raises
   on any success), and a second, independent check: the logits at random points inside the radius never
   change the predicted class.

A failure prints the seed and the architecture and exits 1; the seed reproduces it exactly. What the
checks can see: gross import or composition errors, crashes and refusals on valid files, and any
certificate above what an attack or a gradient proves; on random weights the global bound is often
10-100x the Jacobian norms found, so a composition error smaller than that slack passes here (the
exact per-layer and per-rule tests in tests/ cover that side).

    python -m speccert.devtools.fuzz --seeds 0:200          # a campaign
    python -m speccert.devtools.fuzz --seeds 17 --verbose   # one seed, its architecture printed
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

ACTS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "gelu": nn.GELU,
}


@dataclass
class Drawn:
    """A drawn network (as written to the file), its logits (the same without a final Softmax), its
    input shape, a description of its layers and how it is written ("onnx" or "pt2")."""

    model: nn.Module
    input_shape: tuple[int, int, int]
    layers: list[str]
    logits: nn.Module
    route: str = "onnx"


class _NHWC(nn.Module):
    """A channels-last input transposed inside the graph (as TensorFlow exports do)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


class _MaxMin(nn.Module):
    """MaxMin over axis 1: channel i paired with i + C/2, (max, min) written back (GroupSort 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[0], x.shape[1]
        pairs = x.reshape(n, 2, c // 2, *x.shape[2:])
        out: torch.Tensor = pairs.sort(dim=1, descending=True).values.reshape(x.shape)
        return out


def _act(name: str, channels: int) -> nn.Module:
    """The drawn activation; MaxMin needs an even channel count (ReLU in its place otherwise)."""
    if name == "maxmin":
        return _MaxMin() if channels % 2 == 0 else nn.ReLU()
    return ACTS[name]()


def _act_name(name: str, channels: int) -> str:
    return "relu" if name == "maxmin" and channels % 2 else name


class _Residual(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + self.body(x)
        return out


class _Concat(nn.Module):
    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], dim=1)


class _Normalize(nn.Module):
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _bn(c: int, rng: np.random.Generator) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c)
    assert bn.running_mean is not None and bn.running_var is not None  # track_running_stats (default)
    with torch.no_grad():
        bn.running_mean.copy_(torch.from_numpy(rng.normal(0, 0.5, c)))
        bn.running_var.copy_(torch.from_numpy(rng.uniform(0.05, 2.0, c)))
        bn.weight.copy_(torch.from_numpy(rng.normal(1, 0.5, c)))
        bn.bias.copy_(torch.from_numpy(rng.normal(0, 0.3, c)))
    return bn


def draw(seed: int) -> Drawn:
    """The network of `seed` (deterministic), in eval mode, float32 like a user's file."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    c = int(rng.choice([1, 2, 3]))
    hw = int(rng.choice([6, 7, 8, 9]))
    shape = (c, hw, hw)
    layers: list[nn.Module] = []
    text: list[str] = []
    if rng.random() < 0.5:
        mean = torch.from_numpy(rng.uniform(0.2, 0.6, (c, 1, 1))).float()
        std = torch.from_numpy(rng.uniform(0.15, 0.4, (c, 1, 1))).float()
        layers.append(_Normalize(mean, std))
        text.append("normalize")
    act = str(rng.choice([*ACTS, "maxmin"]))
    for _ in range(int(rng.integers(1, 4))):
        kind = str(rng.choice(["conv", "conv", "residual", "concat", "pool"]))
        if kind == "pool" and hw >= 4:
            k = int(rng.choice([2, 3]))
            s = int(rng.choice([1, 2]))
            p = int(rng.integers(0, k // 2 + 1))
            if rng.random() < 0.5:
                layers.append(nn.MaxPool2d(k, s, p))
                text.append(f"maxpool k{k} s{s} p{p}")
            else:
                layers.append(nn.AvgPool2d(k, s, p))
                text.append(f"avgpool k{k} s{s} p{p}")
            hw = (hw + 2 * p - k) // s + 1
            continue
        if kind == "residual":
            k = int(rng.choice([1, 3]))
            body = nn.Sequential(
                nn.Conv2d(c, c, k, padding=k // 2), _act(act, c), nn.Conv2d(c, c, k, padding=k // 2)
            )
            layers.append(_Residual(body))
            text.append(f"residual(conv{k} {c}->{c}, {_act_name(act, c)}, conv{k})")
            continue
        if kind == "concat":
            c1, c2 = int(rng.integers(1, 4)), int(rng.integers(1, 4))
            layers += [_Concat(nn.Conv2d(c, c1, 3, padding=1), nn.Conv2d(c, c2, 1)), _act(act, c1 + c2)]
            text.append(f"concat(conv3 {c}->{c1}, conv1 {c}->{c2}), {_act_name(act, c1 + c2)}")
            c = c1 + c2
            continue
        k = int(rng.choice([1, 2, 3]))
        s = int(rng.choice([1, 1, 2]))
        d = int(rng.choice([1, 1, 2]))
        p = int(rng.integers(0, 3))
        if hw + 2 * p - d * (k - 1) < 1:
            p = d * (k - 1)
        cout = int(rng.choice([2, 3, 4, 6]))
        groups = c if (c > 1 and cout % c == 0 and rng.random() < 0.4) else 1
        layers.append(nn.Conv2d(c, cout, k, stride=s, padding=p, dilation=d, groups=groups))
        desc = f"conv k{k} s{s} p{p} d{d} g{groups} {c}->{cout}"
        if rng.random() < 0.4:
            layers.append(_bn(cout, rng))
            desc += " bn"
        layers.append(_act(act, cout))
        text.append(f"{desc}, {_act_name(act, cout)}")
        c = cout
        hw = (hw + 2 * p - d * (k - 1) - 1) // s + 1
    hidden = int(rng.choice([5, 8, 12]))
    classes = int(rng.choice([3, 4]))
    layers += [nn.Flatten(), nn.Linear(c * hw * hw, hidden), _act(act, hidden), nn.Linear(hidden, classes)]
    text.append(
        f"flatten, linear {c * hw * hw}->{hidden}, {_act_name(act, hidden)}, linear {hidden}->{classes}"
    )
    model = nn.Sequential(*layers).eval()
    with torch.no_grad():  # weights of a trained net's size, not init's: margins of a few units
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                m.weight.mul_(float(rng.uniform(1.0, 2.5)))
    return _extras(Drawn(model, shape, text, model), seed)


def _extras(d: Drawn, seed: int) -> Drawn:
    """Variations drawn from a second stream (so each seed's base network stays what it was): zero
    padding or a global average pool before the head, a channels-last input, a Softmax output, and the
    .pt2 route (torch.export) instead of ONNX."""
    rng = np.random.default_rng([seed, 1])
    layers = list(d.model.children())
    head = next(i for i, m in enumerate(layers) if isinstance(m, nn.Flatten))
    pre: nn.Module | None = None
    shape = d.input_shape
    c, hw = _shape_before(layers[:head], shape)
    if rng.random() < 0.25:
        p = int(rng.choice([1, 2]))
        pre, text = nn.ZeroPad2d(p), f"zeropad {p}"
        hw += 2 * p
    elif rng.random() < 0.3:
        pre, text = nn.AdaptiveAvgPool2d(1), "global avgpool"
        hw = 1
    if pre is not None:
        lin = layers[head + 1]
        assert isinstance(lin, nn.Linear)
        new = nn.Linear(c * hw * hw, lin.out_features)
        with torch.no_grad():
            new.weight.mul_(float(rng.uniform(1.0, 2.5)))
        layers = [*layers[:head], pre, layers[head], new, *layers[head + 2 :]]
        d.layers[-1] = d.layers[-1].replace(f"linear {lin.in_features}->", f"linear {new.in_features}->", 1)
        d.layers.insert(len(d.layers) - 1, text)
    if rng.random() < 0.2:
        layers.insert(0, _NHWC())
        shape = (shape[1], shape[2], shape[0])
        d.layers.insert(0, "nhwc input")
    logits = nn.Sequential(*layers).eval()
    model = logits
    if rng.random() < 0.2:
        model = nn.Sequential(*layers, nn.Softmax(dim=1)).eval()
        d.layers.append("softmax")
    route = "pt2" if rng.random() < 0.3 else "onnx"
    d.layers.append(f"as {route}")
    return Drawn(model, shape, d.layers, logits, route)


def _shape_before(layers: list[nn.Module], shape: tuple[int, int, int]) -> tuple[int, int]:
    """Channels and (square) side of the activations after `layers` on an input of `shape`."""
    with torch.no_grad():
        out = nn.Sequential(*layers).eval()(torch.zeros(1, *shape))
    return int(out.shape[1]), int(out.shape[2])


def _write(d: Drawn, folder: str) -> str:
    """The drawn network as a file a user would have: ONNX (torch's exporter) or .pt2 (torch.export)."""
    from pathlib import Path

    if d.route == "pt2":
        path = Path(folder) / "m.pt2"
        x = torch.rand(2, *d.input_shape)
        batch = torch.export.Dim("batch", min=1)
        ep = torch.export.export(d.model, (x,), dynamic_shapes={"input": {0: batch}})
        torch.export.save(ep, path)
        return str(path)
    path = Path(folder) / "m.onnx"
    path.write_bytes(_export(d))
    return str(path)


def _export(d: Drawn) -> bytes:
    buf = io.BytesIO()
    x = torch.rand(1, *d.input_shape)
    import warnings

    with warnings.catch_warnings():  # the legacy exporter's deprecation notice: it is the one users have
        warnings.simplefilter("ignore")
        torch.onnx.export(
            d.model,
            (x,),
            buf,  # type: ignore[arg-type]  # the exporter writes to any binary file object
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
            dynamo=False,
            opset_version=17,
        )
    return buf.getvalue()


def _jacobian_ascent(model: nn.Module, shape: tuple[int, ...], seed: int) -> tuple[float, torch.Tensor]:
    """Over a random ascent on a float64 copy of the model: the largest exact ||J(x)||_2 (a lower bound on
    L) and, per pair of classes (a, b), the largest ||grad (f_a - f_b)(x)|| (a lower bound on the
    Lipschitz constant of that margin, which any Lipschitz-based pairwise certificate must cover)."""
    m = _float64(model)
    gen = torch.Generator().manual_seed(seed)
    best = 0.0
    pairs: torch.Tensor | None = None
    x = torch.rand(8, *shape, generator=gen, dtype=torch.float64)
    for _ in range(6):
        for xi in x:
            j = torch.autograd.functional.jacobian(lambda z: m(z.unsqueeze(0))[0], xi).reshape(-1, xi.numel())
            best = max(best, float(torch.linalg.matrix_norm(j, ord=2)))
            diff = (j.unsqueeze(1) - j.unsqueeze(0)).norm(dim=2)
            pairs = diff if pairs is None else torch.maximum(pairs, diff)
        x = x + 0.2 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    assert pairs is not None
    return best, pairs


def _float64(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).double().eval()


def check(seed: int, local: bool = False, points: int = 24) -> list[str]:
    """Run every check of the module docstring on the network of `seed`; the failures, as text."""
    import onnxruntime as ort

    import speccert
    from speccert.bounds import lipschitz_bound

    d = draw(seed)
    import tempfile

    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(d, tmp)
        g = speccert.load(path)
        gen = torch.Generator().manual_seed(seed + 1)
        x = torch.rand(points, *d.input_shape, generator=gen)
        if d.route == "onnx":  # the file's function: onnxruntime's
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            (want,) = sess.run(None, {"x": x.numpy()})
        else:
            with torch.no_grad():
                want = d.model(x).double().numpy()
        got = g.forward(x.to(g.dtype)).detach().double().numpy()
        if not np.allclose(want, got, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(want).max()))):
            problems.append(
                f"import: the file's outputs and the graph's differ by {np.abs(want - got).max():.3g}"
            )
        upper = lipschitz_bound(g).upper
        lower, pair_lower = _jacobian_ascent(d.logits, d.input_shape, seed)
        if not lower <= upper:
            problems.append(f"L upper {upper:.6g} below a Jacobian norm {lower:.6g}")
        with torch.no_grad():
            m64 = _float64(d.logits)
            xd = x.double()
            xe = xd + 0.05 * torch.randn(xd.shape, generator=gen, dtype=torch.float64)
            q = (m64(xd) - m64(xe)).norm(dim=1) / (xd - xe).flatten(1).norm(dim=1)
        if not float(q.max()) <= upper:
            problems.append(f"L upper {upper:.6g} below a difference quotient {float(q.max()):.6g}")
        labels = torch.from_numpy(want.argmax(1))
        kinds = ["all"] if local else None
        try:  # the audit attacks every certified point at its radius and raises on a success
            rep = speccert.certify(g, (x, labels), eps=[0.05, 0.1], audit=points, certificates=kinds)
        except Exception as e:  # noqa: BLE001 — any failure is a finding, reported with its seed
            problems.append(f"certify: {type(e).__name__}: {e}")
            return problems
        problems += _sample_inside(m64, xd, labels, [float(r) for r in rep.radius], gen)
        with torch.no_grad():
            logits = m64(xd)
        problems += _lipschitz_radii(rep.radii, logits, labels, pair_lower)
    return problems


def _sample_inside(
    m64: nn.Module, x: torch.Tensor, labels: torch.Tensor, radii: list[float | None], gen: torch.Generator
) -> list[str]:
    """Random points on the sphere of 0.999 x each certified radius keep the label (float64 model)."""
    out = []
    for i, r in enumerate(radii):
        if r is None or not r > 0 or not math.isfinite(r):
            continue
        u = torch.randn(256, *x.shape[1:], generator=gen, dtype=torch.float64)
        u = u / u.flatten(1).norm(dim=1).reshape(-1, *([1] * (x.dim() - 1)))
        with torch.no_grad():
            pred = m64(x[i] + 0.999 * r * u).argmax(1)
        if bool((pred != labels[i]).any()):
            out.append(f"point {i}: a random point inside the certified radius {r:.4g} changes the class")
    return out


LIPSCHITZ_KINDS = ("global", "pairwise", "margin")


def _lipschitz_radii(
    radii: dict[str, np.ndarray], logits: torch.Tensor, labels: torch.Tensor, pair_lower: torch.Tensor
) -> list[str]:
    """A Lipschitz-based radius r = min_j m_j / L_j needs L_j >= sup ||grad m_j||, so r <= m_j(x) / G_j
    for every j, with G_j the largest gradient norm of the margin found anywhere (pair_lower)."""
    out = []
    for kind in LIPSCHITZ_KINDS:
        if kind not in radii:
            continue
        for i, r in enumerate(radii[kind]):
            y = int(labels[i])
            for j in range(logits.shape[1]):
                if j == y or not float(pair_lower[y, j]) > 0:
                    continue
                cap = float(logits[i, y] - logits[i, j]) / float(pair_lower[y, j])
                if float(r) > cap * (1 + 1e-7) + 1e-12:
                    out.append(
                        f"point {i}: {kind} radius {float(r):.6g} above margin / gradient norm {cap:.6g}"
                    )
                    break  # one line per point and kind
    return out


def _seeds(text: str) -> range:
    a, sep, b = text.partition(":")
    return range(int(a), int(b)) if sep else range(int(a), int(a) + 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m speccert.devtools.fuzz")
    p.add_argument("--seeds", default="0:20", help="one seed N or a range A:B (default 0:20)")
    p.add_argument("--local", action="store_true", help="also the local and crown certificates (slower)")
    p.add_argument("--verbose", action="store_true", help="print each network's layers")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    failed = 0
    t0 = time.perf_counter()
    seeds = _seeds(a.seeds)
    for seed in seeds:
        problems = check(seed, local=a.local)
        if a.verbose or problems:
            print(f"seed {seed}: " + "; ".join(draw(seed).layers))
        for pr in problems:
            print(f"  FAIL seed {seed}: {pr}")
        failed += bool(problems)
    print(f"{len(seeds)} networks, {failed} with a failure, {time.perf_counter() - t0:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
