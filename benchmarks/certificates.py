"""Side by side: global, pairwise, margin-aware and local certificates on the VNN-COMP corpus and the zoo.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/certificates.py --points 100 --attack-points 20

Per model: median certified radius of each kind, of today's best (max of global and pairwise, the
kinds certify ran before margin-aware and local existed) and of the new best (max over all kinds), the
gain new/today, certified accuracy at one eps before and after, seconds per point of all kinds together
(the local kind is nearly all of it; the others cost ~1 ms per point), and the ratio radius / attack distance (a minimal-norm search with PGD-L2: the
smallest radius at which PGD with restarts finds an adversarial point, by bisection) before and after,
on the first `--attack-points` correctly classified points. Prints a Markdown table (docs/certify.md).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

import speccert
from speccert.bounds import certify
from speccert.bounds.audit import pgd_l2
from speccert.errors import SpeccertError
from speccert.ir import Graph

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "onnx-corpus"
ZOO_DATA = ROOT / "models" / "data" / "fashion_mnist_test_1k.npz"
KINDS = ["global", "pairwise", "margin", "local"]


def models(corpus: Path) -> list[tuple[str, Path, tuple[np.ndarray, np.ndarray] | Path, float]]:
    """(name, model file, data, eps) for every corpus model and every zoo ONNX model."""
    out: list[tuple[str, Path, tuple[np.ndarray, np.ndarray] | Path, float]] = []
    for d in sorted(p for p in corpus.iterdir() if (p / "model.onnx").exists()):
        out.append((d.name, d / "model.onnx", (np.load(d / "x.npy"), np.load(d / "y.npy")), 0.1))
    manifest = json.loads((ROOT / "models" / "manifest.json").read_text())
    for name, entry in manifest["models"].items():
        out.append((f"zoo/{name}", ROOT / "models" / entry["files"]["onnx"]["path"], ZOO_DATA, 0.5))
    return out


def attack_distance(graph: Graph, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Smallest radius (bisection, factor 1.1) at which PGD-L2 (40 steps, 4 restarts) finds an
    adversarial point, searched in [start, 4096 start]; inf where none is found."""
    lo, hi = start.clone(), start * 4096
    best = torch.full_like(start, math.inf)
    ok = pgd_l2(graph, x, y, hi, steps=40, restarts=4).success
    best = torch.where(ok, hi, best)
    for _ in range(12):
        mid = (lo * hi).sqrt()
        ok = pgd_l2(graph, x, y, mid, steps=40, restarts=4).success
        best = torch.where(ok, torch.minimum(best, mid), best)
        lo, hi = torch.where(ok, lo, mid), torch.where(ok, mid, hi)
    return best


def run_model(name: str, path: Path, data: object, eps: float, points: int, attack_points: int) -> dict:
    graph = speccert.load(str(path))
    rows: dict = {"model": name}
    t0 = time.perf_counter()
    # One run with every kind (the norms are the same for all; they are a one-off cost per model).
    rep = certify(graph, data, eps=[eps], limit=points, lower_bound=False, certificates=KINDS)  # type: ignore[arg-type]
    rows["norms_s"] = rep.timing["norms_s"]
    rows["s_per_point"] = rep.timing["certify_s"] / max(len(rep.radius), 1)
    rows["local_note"] = "; ".join(n for n in rep.notes if "local" in n)
    radii = dict(rep.radii)
    today = np.maximum(radii["global"], radii.get("pairwise", radii["global"]))
    best = np.max(np.stack(list(radii.values())), axis=0)
    correct = rep.predictions == rep.labels
    rows.update({f"median_{k}": float(np.median(v)) for k, v in radii.items()})
    rows["median_today"], rows["median_best"] = float(np.median(today)), float(np.median(best))
    rows["gain"] = rows["median_best"] / rows["median_today"] if rows["median_today"] > 0 else math.inf
    rows["eps"] = eps
    rows["cra_today"] = float(np.mean(correct & (today >= eps)))
    rows["cra_best"] = float(np.mean(correct & (best >= eps)))
    idx = np.flatnonzero(correct & (best > 0))[:attack_points]
    if idx.size:
        folded = graph.to("cpu", torch.float64)
        x = torch.as_tensor(_x(data, points)[idx], dtype=torch.float64).reshape(-1, *graph.input_shape)
        y = torch.as_tensor(rep.labels[idx])
        dist = attack_distance(folded, x, y, torch.as_tensor(best[idx]))
        if bool((dist < torch.as_tensor(best[idx])).any()):
            raise SystemExit(f"{name}: an attack beat a certified radius")
        rows["ratio_today"] = float(np.median(today[idx] / dist.numpy()))
        rows["ratio_best"] = float(np.median(best[idx] / dist.numpy()))
    rows["wall_s"] = time.perf_counter() - t0
    return rows


def _x(data: object, points: int) -> np.ndarray:
    if isinstance(data, tuple):
        return np.asarray(data[0])[:points]
    return np.load(str(data))["x"][:points]


def table(rows: list[dict]) -> str:
    head = (
        "| model | global | pairwise | margin | local | today | best | gain | CRA@eps today -> best "
        "| s/pt (all kinds) | radius/attack today -> best |\n|" + "---|" * 11
    )
    out = [head]
    for r in rows:

        def f(k: str, r: dict = r) -> str:
            v = r.get(k)
            return "-" if v is None else f"{v:.3g}"

        out.append(
            f"| {r['model']} | {f('median_global')} | {f('median_pairwise')} | {f('median_margin')} "
            f"| {f('median_local')} | {f('median_today')} | {f('median_best')} | {f('gain')}x "
            f"| {r['cra_today']:.0%} -> {r['cra_best']:.0%} (eps {r['eps']:g}) | {f('s_per_point')} "
            f"| {f('ratio_today')} -> {f('ratio_best')} |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--attack-points", type=int, default=20)
    ap.add_argument("--only", default="", help="comma-separated substrings of model names")
    ap.add_argument("--json", default="", help="also write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name, path, data, eps in models(CORPUS):
        if args.only and not any(s in name for s in args.only.split(",")):
            continue
        try:
            rows.append(run_model(name, path, data, eps, args.points, args.attack_points))
        except SpeccertError as exc:
            print(f"{name}: skipped ({exc})", file=sys.stderr)
            continue
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
