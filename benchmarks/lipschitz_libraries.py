"""Audit of "1-Lipschitz" layers and nets from deel-torchlip and orthogonium: claimed L vs speccert's
proven L vs a measured lower bound.

Each entry builds a layer or a small net of the library (random init, or `--train-steps` Adam steps on a
synthetic 10-class problem first), exports it the way a user would (deel-torchlip: `vanilla_export()`;
orthogonium: parametrizations removed, leaving plain nn.Conv2d / nn.Linear), as a legacy ONNX file and a
`.pt2`, loads both with speccert (the load checks them against onnxruntime / torch), and tabulates
- claimed: the constant the library promises (its `k_coef_lip`, 1 here);
- speccert: `lipschitz_bound(method="auto")` of the ONNX and `.pt2` imports (a proven upper bound);
- true / lower: for single layers the operator norm from a dense float64 SVD of the layer's matrix on
  the stated input size (the truth, up to 1e-12); for nets speccert's empirical lower bound (power
  iteration plus gradient ascent on difference quotients);
- verdict: "claim holds" when the truth (or, for nets, the lower bound) is <= claimed * (1 + 1e-4), the
  library's own approximation (Björck / power-iteration tolerances); "claim exceeded" with the figure
  otherwise; and "speccert looser" when only speccert's bound is above the claim (a residual or
  nonlinear structure speccert bounds by composition).

    PYTHONPATH=$PWD /work/venv-lipops/bin/python benchmarks/lipschitz_libraries.py --out docs/architectures.md

needs deel-torchlip and orthogonium (`pip install deel-torchlip orthogonium onnx onnxruntime`). The
Markdown table goes between the `lipschitz-libraries:begin/end` markers of `--out`; rows to `--json`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

import speccert
from speccert.bounds import certify, lipschitz_bound
from speccert.bounds.empirical import empirical_lipschitz

ROUTES = ("onnx", "dynamo", "pt2")
BEGIN, END = "<!-- lipschitz-libraries:begin -->", "<!-- lipschitz-libraries:end -->"
DENSE_MAX = 4096  # inputs of a layer whose matrix is formed densely for the true norm


def _deel(layers: Callable[[], list[nn.Module]]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from deel.torchlip import Sequential

        return Sequential(*layers())

    return build


def _deel_entries() -> dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], bool]]:
    import deel.torchlip as dl

    def cnn(act: Callable[[], nn.Module], mult: int) -> list[nn.Module]:
        return [
            dl.SpectralConv2d(1, 8, 3, padding=1),
            act(),
            dl.SpectralConv2d(8 * mult, 16, 3, padding=1, stride=2),
            act(),
            nn.Flatten(),
            dl.SpectralLinear(16 * mult * 8 * 8, 10),
        ]

    def lipnet() -> list[nn.Module]:
        return [
            dl.SpectralConv2d(1, 8, 3, padding=1),
            dl.HouseHolder(8),
            dl.LayerCentering(8),
            dl.ScaledL2NormPool2d(2),
            dl.SpectralConv2d(8, 16, 3, padding=1),
            dl.HouseHolder(16),
            nn.Flatten(),
            dl.SpectralLinear(16 * 8 * 8, 10),
        ]

    return {  # name: (builder, input shape, is a net: no dense true norm; trained when a classifier)
        "SpectralLinear 64->32": (_deel(lambda: [dl.SpectralLinear(64, 32)]), (64,), False),
        "FrobeniusLinear 64->32": (_deel(lambda: [dl.FrobeniusLinear(64, 32)]), (64,), False),
        "SpectralConv2d 8->8 3x3 @16x16": (
            _deel(lambda: [dl.SpectralConv2d(8, 8, 3, padding=1)]),
            (8, 16, 16),
            False,
        ),
        "SpectralConv2d 8->16 3x3 s2 @16x16": (
            _deel(lambda: [dl.SpectralConv2d(8, 16, 3, padding=1, stride=2)]),
            (8, 16, 16),
            False,
        ),
        "FrobeniusConv2d 8->8 3x3 @16x16": (
            _deel(lambda: [dl.FrobeniusConv2d(8, 8, 3, padding=1)]),
            (8, 16, 16),
            False,
        ),
        "ScaledAvgPool2d 2x2 @8x16x16": (_deel(lambda: [dl.ScaledAvgPool2d(2)]), (8, 16, 16), False),
        "LayerCentering 8ch @8x16x16": (_deel(lambda: [dl.LayerCentering(8)]), (8, 16, 16), False),
        "ScaledL2NormPool2d 2x2 @8x16x16": (_deel(lambda: [dl.ScaledL2NormPool2d(2)]), (8, 16, 16), True),
        "HouseHolder 8ch @8x16x16": (_deel(lambda: [dl.HouseHolder(8)]), (8, 16, 16), True),
        "CNN, GroupSort2": (_deel(lambda: cnn(dl.GroupSort2, 1)), (1, 16, 16), True),
        "CNN, FullSort": (_deel(lambda: cnn(dl.FullSort, 1)), (1, 16, 16), True),
        "CNN, MaxMin": (_deel(lambda: cnn(dl.MaxMin, 2)), (1, 16, 16), True),
        "CNN, HouseHolder, LayerCentering, L2 pool": (_deel(lipnet), (1, 16, 16), True),
    }


def _orthogonium_entries() -> dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], bool]]:
    from orthogonium.layers import AdaptiveOrthoConv2d, MaxMin, OrthoLinear
    from orthogonium.layers.conv.AOL import AOLConv2D
    from orthogonium.layers.conv.SLL import SDPBasedLipschitzResBlock

    def aoc(cin: int, cout: int, stride: int = 1, mode: str = "circular") -> nn.Module:
        return AdaptiveOrthoConv2d(cin, cout, 3, stride=stride, padding=1, padding_mode=mode)

    def cnn() -> nn.Module:
        return nn.Sequential(
            aoc(1, 8, mode="zeros"),
            MaxMin(),
            aoc(8, 16, 2, mode="zeros"),
            MaxMin(),
            nn.Flatten(),
            OrthoLinear(16 * 8 * 8, 10),
        )

    return {
        "OrthoLinear 64->64": (lambda: OrthoLinear(64, 64), (64,), False),
        "AdaptiveOrthoConv2d 8->8 3x3 circular @16x16": (lambda: aoc(8, 8), (8, 16, 16), False),
        "AdaptiveOrthoConv2d 8->8 3x3 zeros @16x16": (lambda: aoc(8, 8, mode="zeros"), (8, 16, 16), False),
        "AdaptiveOrthoConv2d 8->16 3x3 s2 zeros @16x16": (
            lambda: aoc(8, 16, 2, mode="zeros"),
            (8, 16, 16),
            False,
        ),
        "AOLConv2D 8->8 3x3 @16x16": (lambda: AOLConv2D(8, 8, 3, padding=1), (8, 16, 16), False),
        "SLL residual block 8ch @8x8": (lambda: SDPBasedLipschitzResBlock(8, 2, 3), (8, 8, 8), True),
        "CNN, MaxMin": (cnn, (1, 16, 16), True),
    }


def vanilla(module: nn.Module) -> nn.Module:
    """The plain torch module a user exports: deel's vanilla_export(), parametrizations baked in."""
    if hasattr(module, "vanilla_export"):
        module = module.vanilla_export()
    for sub in list(module.modules()):
        if parametrize.is_parametrized(sub):
            for name in list(sub.parametrizations.keys()):
                parametrize.remove_parametrizations(sub, name, leave_parametrized=True)
    return module.eval()


def train(module: nn.Module, shape: tuple[int, ...], steps: int, seed: int = 0) -> None:
    """A few Adam steps on a synthetic 10-class problem (class means plus noise), so that weights move
    off their initialisation; only for nets with 10 outputs."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(10, *shape, generator=gen)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    module.train()
    for _ in range(steps):
        y = torch.randint(0, 10, (64,), generator=gen)
        x = means[y] + 0.5 * torch.randn(64, *shape, generator=gen)
        loss = nn.functional.cross_entropy(module(x) * 10.0, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.zero_grad(set_to_none=True)  # a stale .grad would follow the weight out of its parametrization
    module.eval()


def dense_norm(graph: speccert.Graph) -> float | None:
    """||A||_2 of a linear graph on its input size (float64 matrix, SVD), None when too large. Taken of
    the imported .pt2, i.e. of the exported function (orthogonium's BCOP-RKO layers compute their
    forward from float64-exact factors that the exported float32 kernel rounds: a 1e-8 difference)."""
    n = math.prod(graph.input_shape)
    if n > DENSE_MAX:
        return None
    g = graph.to("cpu", torch.float64)
    with torch.no_grad():
        eye = torch.eye(n, dtype=torch.float64).reshape(n, *graph.input_shape)
        cols = g.forward(eye) - g.forward(torch.zeros(1, *graph.input_shape, dtype=torch.float64))
    return float(torch.linalg.matrix_norm(cols.reshape(n, -1).T, ord=2))


def export(module: nn.Module, shape: tuple[int, ...], folder: Path) -> dict[str, Path]:
    """The three routes of docs/architectures.md: legacy ONNX, dynamo ONNX (torch's default), .pt2."""
    x = torch.randn(1, *shape)
    files = {"onnx": folder / "m.onnx", "dynamo": folder / "d.onnx", "pt2": folder / "m.pt2"}
    torch.onnx.export(module, (x,), str(files["onnx"]), dynamo=False, opset_version=17)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(module, (x,), str(files["dynamo"]), dynamo=True, opset_version=19)
    except Exception:  # noqa: BLE001 - an exporter failure is a row's finding, not the script's
        del files["dynamo"]
    torch.export.save(torch.export.export(module, (x,)), str(files["pt2"]))
    return files


def certify_kinds(graph: speccert.Graph, shape: tuple[int, ...]) -> str:
    """Which certificate kinds certify 32 points (random, labelled by the net itself); '–' for a net
    that is not a classifier (a residual block)."""
    if len(graph.output_shape) != 1:
        return "–"
    x = torch.randn(32, *shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = graph.forward(x).argmax(1)
    rep = certify(graph, (x.numpy(), y.numpy()), eps=[0.05], lower_bound=False, audit=8)
    return ", ".join(k for k in rep.radii if float(rep.radii[k].max()) > 0)


def measure(
    library: str, name: str, spec: tuple[Callable[[], nn.Module], tuple[int, ...], bool], steps: int
) -> dict[str, Any]:
    build, shape, is_net = spec
    torch.manual_seed(0)
    module = build()
    row: dict[str, Any] = {"library": library, "name": name, "input": list(shape), "claimed": 1.0}
    with torch.no_grad():  # only classifiers (10 logits) are trained; a lone layer keeps its init
        classifier = module(torch.zeros(1, *shape)).shape == (1, 10)
    row["trained_steps"] = steps if is_net and classifier and "SLL" not in name else 0
    if row["trained_steps"]:
        try:
            train(module, shape, steps)
        except RuntimeError as exc:  # the library's own training step failing: keep the random init
            row["trained_steps"] = 0
            row["train_error"] = str(exc).splitlines()[0][:160]
            torch.manual_seed(0)
            module = build()
    plain = vanilla(module)
    with tempfile.TemporaryDirectory() as tmp:
        files = export(plain, shape, Path(tmp))
        for route in ROUTES:
            row[f"speccert_{route}"] = None
            if route not in files:
                row[f"error_{route}"] = "export failed"
                continue
            t0 = time.perf_counter()
            try:
                g = speccert.load(files[route])
                row[f"speccert_{route}"] = lipschitz_bound(g, method="auto").upper
                row[f"ops_{route}"] = sorted({n.op_type for n in g.nodes})
            except Exception as exc:  # noqa: BLE001 - a benchmark records every failure as a row
                row[f"error_{route}"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            row[f"seconds_{route}"] = round(time.perf_counter() - t0, 2)
        g = speccert.load(files["pt2"])
        if not is_net:
            row["true"] = dense_norm(g)
        else:
            x = torch.randn(64, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
            row["lower"] = empirical_lipschitz(g.to("cpu", torch.float64), x, ascent_steps=30)
            row["certified_by"] = certify_kinds(g, shape)
    row["verdict"] = verdict(row)
    return row


def verdict(row: dict[str, Any]) -> str:
    """How the claim fares: exceeded (beyond the library's own 1e-4 approximation), held up to float32
    rounding (above the claim by less than that), held, or only speccert's bound above it."""
    claim = row["claimed"]
    proven = [row[f"speccert_{k}"] for k in ROUTES if row.get(f"speccert_{k}") is not None]
    measured = row.get("true", row.get("lower"))
    if measured is not None and measured > claim * (1 + 1e-4):
        return f"claim exceeded: {'true norm' if 'true' in row else 'measured'} {measured:.4f}"
    if not proven:
        return "not imported"
    top = max(proven)
    if top > claim * (1 + 1e-4):
        return "speccert looser than the claim"
    if top > claim:
        return f"holds up to float32 rounding (proven {claim:g} + {top - claim:.1e})"
    return "claim holds (proven)"


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.7f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| library | layer / net | claimed L | speccert L: ONNX legacy | ONNX dynamo | .pt2 "
        "| true norm / lower bound | certified by | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        truth = _fmt(r["true"]) if "true" in r else f"≥ {_fmt(r.get('lower'))}"
        trained = f" (trained {r['trained_steps']} steps)" if r.get("trained_steps") else ""
        routes = " | ".join(
            _fmt(r.get(f"speccert_{k}")) if r.get(f"speccert_{k}") is not None else "refused" for k in ROUTES
        )
        lines.append(
            f"| {r['library']} | {r['name']}{trained} | {r['claimed']:g} | {routes} | {truth} | {r.get('certified_by', '')} | {r['verdict']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="Markdown file whose lipschitz-libraries block is replaced")
    ap.add_argument("--json", type=Path, help="write the rows as JSON here")
    ap.add_argument("--train-steps", type=int, default=50, help="Adam steps on synthetic data for the nets")
    ap.add_argument("--only", default="", help="comma-separated substrings of entry names")
    ap.add_argument("--rows", type=Path, help="render these saved rows (JSON list) instead of measuring")
    args = ap.parse_args()
    if args.rows:
        rows = json.loads(args.rows.read_text())
        for r in rows:
            r["verdict"] = verdict(r)
        _publish(rows, args.out)
        return
    torch.set_num_threads(1)
    entries = [("deel-torchlip", n, s) for n, s in _deel_entries().items()]
    entries += [("orthogonium", n, s) for n, s in _orthogonium_entries().items()]
    wanted = [w for w in args.only.split(",") if w]
    rows = []
    for lib, name, spec in entries:
        if wanted and not any(w in name for w in wanted):
            continue
        rows.append(measure(lib, name, spec, args.train_steps))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    _publish(rows, args.out)


def _publish(rows: list[dict[str, Any]], out: Path | None) -> None:
    table = markdown(rows)
    if out is None:
        print(table)
        return
    text = out.read_text()
    pre, rest = text.split(BEGIN + "\n", 1)
    out.write_text(pre + BEGIN + "\n" + table + END + rest.split(END, 1)[1])


if __name__ == "__main__":
    main()
