"""Side by side: every certificate kind on the VNN-COMP corpus and the zoo.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/certificates.py --points 20 --attack-points 5

Per model: median certified radius of each kind (global, pairwise, margin, second_order where the
model is smooth, local, crown), of today's best (max of global and pairwise, the kinds certify ran
before the others existed) and of the new best (max over all kinds), the gain new/today, how many
points each of local and crown won, certified accuracy at one eps before and after, seconds per point
of the cheap kinds together, of local and of crown (each run on its own), and the ratio radius /
attack distance (the smallest radius at which PGD-L2 with restarts finds an adversarial point, by
bisection) before and after, on the first `--attack-points` certified points. Prints a Markdown table
(docs/certify.md).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import Data, first_points, main_loop  # noqa: E402

import speccert  # noqa: E402
from speccert.bounds import certify  # noqa: E402
from speccert.bounds.audit import pgd_l2  # noqa: E402
from speccert.bounds.options import CROWN_STEPS  # noqa: E402
from speccert.errors import SpeccertError  # noqa: E402
from speccert.ir import Graph  # noqa: E402

CHEAP = ["global", "pairwise", "margin", "second_order"]
COSTLY = ["local", "crown"]
KINDS = CHEAP + COSTLY


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


def _certify_kinds(
    graph: Graph, data: Data, eps: float, points: int, rows: dict, crown_steps: int = CROWN_STEPS
) -> dict[str, np.ndarray]:
    """Radii of every kind: the cheap ones in one run, local and crown each in their own (timed)."""
    radii: dict[str, np.ndarray] = {}
    for group in (CHEAP, *([k] for k in COSTLY)):
        rep = certify(
            graph,
            data,  # type: ignore[arg-type]
            eps=[eps],
            limit=points,
            lower_bound=False,
            certificates=group,
            crown_steps=crown_steps,
        )
        label = "cheap" if group is CHEAP else group[0]
        rows[f"s_per_point_{label}"] = rep.timing["certify_s"] / max(len(rep.radius), 1)
        rows.setdefault("norms_s", rep.timing["norms_s"])
        rows["notes"] = rows.get("notes", []) + [n for n in rep.notes if "not used" in n]
        radii.update(rep.radii)
        rows["labels"], rows["correct"] = rep.labels, rep.predictions == rep.labels
    return radii


def run_model(name: str, path: Path, data: Data, eps: float, args: argparse.Namespace) -> dict | None:
    try:
        graph = speccert.load(str(path))
        rows: dict = {"model": name, "eps": eps}
        t0 = time.perf_counter()
        radii = _certify_kinds(graph, data, eps, args.points, rows, args.crown_steps)
    except SpeccertError as exc:
        print(f"{name}: skipped ({exc})", file=sys.stderr)
        return None
    labels, correct = rows.pop("labels"), rows.pop("correct")
    today = np.maximum(radii["global"], radii.get("pairwise", radii["global"]))
    best = np.max(np.stack(list(radii.values())), axis=0)
    rows.update({f"median_{k}": float(np.median(v)) for k, v in radii.items()})
    rows["median_today"], rows["median_best"] = float(np.median(today)), float(np.median(best))
    rows["gain"] = rows["median_best"] / rows["median_today"] if rows["median_today"] > 0 else math.inf
    for k in COSTLY:
        if k in radii:
            others = np.max(np.stack([v for n, v in radii.items() if n != k]), axis=0)
            rows[f"wins_{k}"] = int(np.sum((radii[k] > others) & (best > 0)))
    rows["cra_today"] = float(np.mean(correct & (today >= eps)))
    rows["cra_best"] = float(np.mean(correct & (best >= eps)))
    idx = np.flatnonzero(correct & (best > 0))[: args.attack_points]
    if idx.size:
        folded = graph.to("cpu", torch.float64)
        x = torch.as_tensor(first_points(data, args.points)[0][idx], dtype=torch.float64)
        x = x.reshape(-1, *graph.input_shape)
        dist = attack_distance(folded, x, torch.as_tensor(labels[idx]), torch.as_tensor(best[idx]))
        if bool((dist < torch.as_tensor(best[idx])).any()):
            raise SystemExit(f"{name}: an attack beat a certified radius")
        rows["ratio_today"] = float(np.median(today[idx] / dist.numpy()))
        rows["ratio_best"] = float(np.median(best[idx] / dist.numpy()))
    rows["wall_s"] = time.perf_counter() - t0
    return rows


def table(rows: list[dict]) -> str:
    cols = ["global", "pairwise", "margin", "second_order", "local", "crown", "today", "best"]
    head = (
        "| model | " + " | ".join(cols) + " | gain | wins local / crown | CRA@eps today -> best "
        "| s/pt cheap / local / crown | radius/attack today -> best |\n|" + "---|" * (len(cols) + 6)
    )
    out = [head]
    for r in rows:

        def f(k: str, r: dict = r) -> str:
            v = r.get(k)
            return "-" if v is None else f"{v:.3g}"

        medians = " | ".join(f(f"median_{c}") for c in cols)
        out.append(
            f"| {r['model']} | {medians} | {f('gain')}x | {r.get('wins_local', '-')} / {r.get('wins_crown', '-')} "
            f"| {r['cra_today']:.0%} -> {r['cra_best']:.0%} (eps {r['eps']:g}) "
            f"| {f('s_per_point_cheap')} / {f('s_per_point_local')} / {f('s_per_point_crown')} "
            f"| {f('ratio_today')} -> {f('ratio_best')} |"
        )
    return "\n".join(out)


def _args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--attack-points", type=int, default=5)
    ap.add_argument(
        "--crown-steps",
        type=int,
        default=CROWN_STEPS,
        help="the crown certificate's slope-optimisation steps",
    )


if __name__ == "__main__":
    main_loop(__doc__ or "", run_model, table, _args)
