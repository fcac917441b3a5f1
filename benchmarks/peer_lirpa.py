"""Peer side by side: auto_LiRPA's CROWN with an L2 ball on the corpus and the zoo (benchmark only).

    /work/venv-lirpa/bin/python benchmarks/peer_lirpa.py --points 20 --json peer.json

Runs in its own virtual environment (auto_LiRPA is never a dependency of speccert or its tests):
PyPI's auto_LiRPA 0.3 (2022) pins torch < 1.13 and does not import with torch 2.x, so the venv holds
auto_LiRPA 0.7.1 installed from its GitHub source (`pip install --no-deps .`) next to torch 2.13 CPU.
Each model is loaded and folded by speccert (the same function as certify sees, normalisation
included), turned into a torch module (Graph.to_torch, float32 as a user would run it) and handed to
auto_LiRPA's BoundedModule. Per correctly classified point, the certified radius is the largest eps
(log-bisection, SEARCH_STEPS steps on [1e-4, 10]: 1.1 % resolution, every point its own eps) at which CROWN's lower
bounds of all margins f_y - f_j over PerturbationLpNorm(norm=2, eps) are positive. CROWN's bounds
are computed in float32 without rounding control: a peer's figure, not a sound certificate.
Prints a Markdown table: certified accuracy at the eps of benchmarks/certificates.py, median radius
over the first --points points (0 for misclassified ones, as certify reports), seconds per point.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import Data, first_points, main_loop  # noqa: E402

import speccert  # noqa: E402
from speccert.bounds.lipschitz import lipschitz_bound  # noqa: E402
from speccert.ir import INPUT, Affine, Graph, Node  # noqa: E402

SEARCH_STEPS = 10
LO, HI = 1e-4, 10.0


def _bisect(margins_ok: Callable[[torch.Tensor], torch.Tensor], n: int) -> torch.Tensor:
    lo, hi = torch.full((n,), LO), torch.full((n,), HI)
    best = torch.zeros(n)
    for _ in range(SEARCH_STEPS):
        mid = torch.sqrt(lo * hi)
        ok = margins_ok(mid)
        best = torch.where(ok, mid, best)
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    return best


def crown_radius(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per point the largest eps (log-bisection) with every CROWN margin lower bound > 0. All points
    in one batch with a per-point eps where auto_LiRPA allows it; its convolution's interval pass
    asserts a scalar eps, so conv nets are bounded one point at a time."""
    from auto_LiRPA import BoundedModule, BoundedTensor
    from auto_LiRPA.perturbations import PerturbationLpNorm

    model = BoundedModule(net, torch.zeros_like(x[:1]), device="cpu", verbose=0)
    classes = int(net(x[:1]).shape[1])
    others = torch.stack([torch.tensor([j for j in range(classes) if j != int(c)]) for c in y])
    spec = torch.zeros(x.shape[0], classes - 1, classes)
    spec.scatter_(2, y[:, None, None].expand(-1, classes - 1, 1), 1.0)
    spec.scatter_(2, others[:, :, None], -1.0)

    def ok(xs: torch.Tensor, c: torch.Tensor, eps: torch.Tensor | float) -> torch.Tensor:
        ptb = PerturbationLpNorm(norm=2, eps=eps)
        lb, _ = model.compute_bounds(x=(BoundedTensor(xs, ptb),), C=c, method="CROWN", bound_upper=False)
        return (lb.min(1).values > 0).detach()

    try:
        return _bisect(lambda eps: ok(x, spec, eps[:, None]), x.shape[0])
    except AssertionError:
        rows = [
            _bisect(lambda e, i=i: ok(x[i : i + 1], spec[i : i + 1], float(e[0])), 1) for i in range(len(x))
        ]
        return torch.cat(rows)


def _plain_names(graph: Graph) -> Graph:
    """The same graph with nodes named n0, n1, ...: auto_LiRPA's state dict cannot load parameters
    whose names hold the '/' and '.' of ONNX node names ("Missing key(s) ... /11.value")."""
    names = {INPUT: INPUT} | {n.name: f"n{i}" for i, n in enumerate(graph.nodes)}
    nodes = [Node(names[n.name], n.op, tuple(names[i] for i in n.inputs)) for n in graph.nodes]
    return Graph(graph.input_shape, nodes, names[graph.output], dtype=graph.dtype)


def _affine_module(op: Affine, shape: tuple[int, ...]) -> torch.nn.Module:
    """The Affine x * scale + shift as a layer auto_LiRPA bounds correctly: a diagonal Linear on vectors,
    a grouped 1x1 Conv on images (per-channel constants). An earlier harness multiplied by buffers with
    a batch axis: auto_LiRPA 0.7.1 warned "Constant operand ... has batch dimension" and returned radii
    above the distance at which PGD finds adversarial points (zoo cnn: 0.58 against 0.56), so the zoo
    rows it produced were not bounds at all."""
    scale = op.scale.detach().to(torch.float32).expand(shape)
    shift = op.shift.detach().to(torch.float32).expand(shape)
    if len(shape) == 1:
        lin = torch.nn.Linear(shape[0], shape[0])
        lin.weight.data = torch.diag(scale).contiguous()
        lin.bias.data = shift.clone()
        return lin
    c = shape[0]
    per_channel = scale.reshape(c, -1)
    if len(shape) != 3 or bool((per_channel != per_channel[:, :1]).any()):
        raise ValueError(f"no peer layer for an Affine with scale shape {tuple(op.scale.shape)}")
    conv = torch.nn.Conv2d(c, c, 1, groups=c)
    conv.weight.data = per_channel[:, 0].reshape(c, 1, 1, 1).clone()
    conv.bias.data = shift.reshape(c, -1)[:, 0].clone()
    return conv


class PeerNet(torch.nn.Module):
    """Runs the graph's ops in order, Affine nodes as the layers of `_affine_module` (the IR's Affine
    casts its constants with .to(dtype), which auto_LiRPA 0.7.1 under torch 2.13 traces into constants
    its state dict cannot load back: "Missing key(s) ... /11.value")."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.graph = graph
        shapes = {INPUT: graph.input_shape} | {n.name: n.shape for n in graph.nodes}
        self.affine = torch.nn.ModuleDict(
            {
                n.name: _affine_module(n.op, shapes[n.inputs[0]])
                for n in graph.nodes
                if isinstance(n.op, Affine)
            }
        )
        self.params = graph.to_torch()  # the other ops' parameters (shared with the graph)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = {INPUT: x}
        for n in self.graph.nodes:
            if n.name in self.affine:
                values[n.name] = self.affine[n.name](values[n.inputs[0]])
            else:
                values[n.name] = n.op.forward(*(values[i] for i in n.inputs))
        return values[self.graph.output]


def run_model(name: str, path: Path, data: Data, eps: float, args: argparse.Namespace) -> dict:
    row: dict = {"model": name, "eps": eps}
    xs, ys = first_points(data, args.points)
    graph = _plain_names(lipschitz_bound(speccert.load(str(path))).folded.to("cpu", torch.float32))
    net = PeerNet(graph).eval()
    x = torch.as_tensor(xs, dtype=torch.float32).reshape(-1, *graph.input_shape)
    y = torch.as_tensor(ys, dtype=torch.int64)
    with torch.no_grad():
        out = net(x)
        gap = float((out - graph.forward(x)).abs().max())
        assert gap <= 1e-4 * (1.0 + float(out.abs().max())), f"the peer's module is another function ({gap})"
        correct = out.argmax(1) == y
    t0 = time.perf_counter()
    try:
        r = torch.zeros(x.shape[0])
        if bool(correct.any()):
            r[correct] = crown_radius(net, x[correct], y[correct])
    except Exception as exc:  # noqa: BLE001 - a peer failure is a result to report, not a crash
        row["error"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}"
        return row
    row["s_per_point"] = (time.perf_counter() - t0) / x.shape[0]
    row["median_crown"] = float(r.median())
    row["cra_crown"] = float((r >= eps).float().mean())
    return row


def table(rows: list[dict]) -> str:
    out = ["| model | CROWN-L2 median radius | CRA@eps | s/pt |", "|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['model']} | failed: {r['error']} | - | - |")
        else:
            out.append(
                f"| {r['model']} | {r['median_crown']:.3g} | {r['cra_crown']:.0%} (eps {r['eps']:g}) "
                f"| {r['s_per_point']:.3g} |"
            )
    return "\n".join(out)


if __name__ == "__main__":
    main_loop(__doc__ or "", run_model, table)
