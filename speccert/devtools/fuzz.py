"""Soundness fuzzing: random small PyTorch classifiers, written as a user would write them, imported
and certified, each certificate attacked.

Each seed draws a network (speccert.devtools.fuzz_nets: convolutions with random geometry, BatchNorm,
residual additions, concatenations, pooling, padding, smooth and piecewise-linear activations, MaxMin,
channels-last input, Softmax output), writes it as ONNX (torch's exporter) or .pt2 (torch.export), and
checks, against ground truth computed independently of speccert's bounds:

1. import: the file's outputs (onnxruntime's, or torch's for .pt2) equal the imported graph's (the
   certified function is the file's);
2. the global bound: L upper >= the largest exact Jacobian norm ||J(x)||_2 found by a random ascent on
   the torch model in float64 (a true lower bound on the Lipschitz constant), and >= difference quotients;
3. the certificates: no Lipschitz-based radius (global, pairwise, margin-aware) exceeds m_j(x) / G_j,
   G_j the largest norm of the margin's gradient found anywhere; every certified radius (with --local
   also the local and crown kinds) survives a PGD-L2 attack at that radius (certify's own audit, which
   raises on any success); random points inside the radius never change the predicted class.

4. every layer: each registered norm method, run on the file's graph, brackets the exact norm of the
   layer's folded operator (BatchNorm and normalisation scales folded in, as the certifier composes them):
   every proven upper bound >= and every proven lower bound <= the float64 SVD of its autograd Jacobian,
   and the folded graph computes the loaded graph's function (float64). Unlike check 2, this one has no
   slack to hide behind: one layer's bound a few ulps below its operator fails it;
5. every nonlinear node the composition scales by a constant (activations, PReLU, max-pool, MaxMin,
   ...): the constant is >= the node's own slope found by autograd, and its curvature constant >= |f''|.
   Elementwise nodes are read on a dense grid of inputs in [-25, 25] (step 1e-3: a slope's peak, such
   as hardswish's 1.5 at 3-, is not missed by more than a part in a thousand), the others by their
   Jacobian norm at the network's activations and at random points around them.

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
import copy
import io
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from speccert.devtools.fuzz_nets import Drawn, draw

if TYPE_CHECKING:
    from speccert.ir import Graph
    from speccert.ir.op_base import Op


def _write(d: Drawn, folder: str) -> str:
    """The drawn network as a file a user would have: ONNX (torch's exporter) or .pt2 (torch.export)."""
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


def _jacobian_ascent(m: nn.Module, shape: tuple[int, ...], seed: int) -> tuple[float, torch.Tensor]:
    """Over a random ascent on `m` (the model in float64): the largest exact ||J(x)||_2 (a lower bound on
    L) and, per pair of classes (a, b), the largest ||grad (f_a - f_b)(x)|| (a lower bound on the
    Lipschitz constant of that margin, which any Lipschitz-based pairwise certificate must cover)."""
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
    return copy.deepcopy(model).double().eval()


def check(seed: int, local: bool = False, points: int = 24) -> list[str]:
    """Run every check of the module docstring on the network of `seed`; the failures, as text."""
    import onnxruntime as ort

    import speccert
    from speccert.bounds import lipschitz_bound
    from speccert.ir import fold_linear

    d = draw(seed)
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
        m64 = _float64(d.logits)
        lower, pair_lower = _jacobian_ascent(m64, d.input_shape, seed)
        if not lower <= upper:
            problems.append(f"L upper {upper:.6g} below a Jacobian norm {lower:.6g}")
        with torch.no_grad():
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
        g64 = g.to("cpu", torch.float64)
        folded = fold_linear(g64)
        problems += _per_layer(g64, folded, xd)
        problems += _scale_constants(folded, xd, gen)
    return problems


REL = 1e-12  # the float64 SVD's own error is ~1e-15 relative


def _per_layer(g64: Graph, folded: Graph, x: torch.Tensor) -> list[str]:
    """Check 4 of the module docstring on the loaded graph in float64 (`folded`: it folded; inputs `x`,
    float64). The norm methods run on g64: layer_norms folds a float32 graph in float64 anyway."""
    from speccert.norms import LowerBound, UpperBound, layer_norms, method_names

    out = []
    with torch.no_grad():
        gap = float((folded.forward(x) - g64.forward(x)).abs().max())
        scale = float(g64.forward(x).abs().max())
    if not gap <= 1e-9 * max(1.0, scale):
        out.append(f"folding: the folded graph's outputs differ from the graph's by {gap:.3g}")
    truth: dict[str, float] = {}
    for method in method_names():
        for ln in layer_norms(g64, method=method):
            if ln.name not in truth:
                truth[ln.name] = _operator_norm(folded.node(ln.name).op, ln.in_shape)
            s = truth[ln.name]
            for key, r in ln.others.items():
                if isinstance(r, UpperBound) and not r.value >= s * (1 - REL):
                    out.append(f"layer {ln.name} ({ln.op}): {key} {r.value!r} below its norm {s!r}")
                if isinstance(r, LowerBound) and not r.value <= s * (1 + REL):
                    out.append(f"layer {ln.name} ({ln.op}): {key} {r.value!r} above its norm {s!r}")
            if ln.upper not in ln.others.values() and not ln.upper.value >= s * (1 - REL):
                out.append(f"layer {ln.name} ({ln.op}): {method}'s upper {ln.upper.value!r} below {s!r}")
    return out


def _scale_constants(folded: Graph, x: torch.Tensor, gen: torch.Generator) -> list[str]:
    """Check 5 of the module docstring on the folded float64 graph (inputs `x`, float64)."""
    from speccert.bounds.compose import graph_rule
    from speccert.ir import Activation, PRelu

    with torch.no_grad():
        acts = folded.activations(x)
    out = []
    for node in folded.nodes:
        rule = graph_rule(folded, node)
        if rule.kind != "scale":
            continue
        u = acts[node.inputs[0]]
        if isinstance(node.op, Activation | PRelu):
            slope, curv = _elementwise_slopes(node.op, u.shape[1:])
        else:
            slope, curv = _jacobian_slope(node.op, u, gen), 0.0
        if not slope <= rule.slope * (1 + 1e-9):
            out.append(
                f"node {node.name} ({node.op.describe()}): constant {rule.slope!r} below a slope {slope!r}"
            )
        if rule.curvature is not None and not curv <= rule.curvature * (1 + 1e-6) + 1e-9:
            out.append(
                f"node {node.name} ({node.op.describe()}): curvature {rule.curvature!r} below {curv!r}"
            )
    return out


def _elementwise_slopes(op: Op, shape: torch.Size) -> tuple[float, float]:
    """max |f'| and max |f''| of an elementwise op over [-25, 25], step 1e-3, in every channel."""
    per = math.prod(shape)
    grid = torch.linspace(-25.0, 25.0, 50001, dtype=torch.float64)
    reps = -(-grid.numel() // per)
    z = torch.cat([grid, grid[: reps * per - grid.numel()]]).reshape(reps, *shape)
    z = z.requires_grad_(True)
    (d1,) = torch.autograd.grad(op.forward(z).sum(), z, create_graph=True)
    d2 = torch.autograd.grad(d1.sum(), z, allow_unused=True)[0] if d1.requires_grad else None
    curv = 0.0 if d2 is None else float(d2.abs().max())
    return float(d1.detach().abs().max()), curv


def _jacobian_slope(op: Op, u: torch.Tensor, gen: torch.Generator) -> float:
    """The largest ||J(v)||_2 of a one-input op at the activations u and at random points around them."""
    best = 0.0
    for i in range(min(4, u.shape[0])):
        for scale in (0.0, 0.3, 3.0):
            v = u[i] + scale * torch.randn(u[i].shape, generator=gen, dtype=torch.float64)
            j = torch.autograd.functional.jacobian(lambda z: op.forward(z.unsqueeze(0))[0], v)
            if bool(torch.isfinite(j).all()):  # not where autograd has no derivative (an L2 pool at 0)
                best = max(best, float(torch.linalg.matrix_norm(j.reshape(-1, v.numel()), ord=2)))
    return best


def _operator_norm(op: Op, in_shape: tuple[int, ...]) -> float:
    """||A||_2 of an affine op's linear part: the float64 SVD of its autograd Jacobian (at 0)."""
    x0 = torch.zeros(in_shape, dtype=torch.float64)
    j = torch.autograd.functional.jacobian(lambda z: op.forward(z.unsqueeze(0))[0], x0)
    return float(torch.linalg.matrix_norm(j.reshape(-1, x0.numel()), ord=2))


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
        try:
            problems = check(seed, local=a.local)
        except Exception as e:  # noqa: BLE001 — a crash of a check is a finding too, not the campaign's end
            problems = [f"the checks crashed: {type(e).__name__}: {e}"]
        if a.verbose or problems:
            print(f"seed {seed}: " + "; ".join(draw(seed).layers))
        for pr in problems:
            print(f"  FAIL seed {seed}: {pr}")
        failed += bool(problems)
    print(f"{len(seeds)} networks, {failed} with a failure, {time.perf_counter() - t0:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
