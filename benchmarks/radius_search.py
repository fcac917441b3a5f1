"""Side by side: `--radius-search full` against `eps` for the per-point kinds (local, crown).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/radius_search.py

Per model and kind, one after the other in one process (full, then eps, on the same points):
`certify(graph, points, eps, certificates=[global, pairwise, margin, KIND], radius_search=MODE,
lower_bound=False)`; seconds per point of the certificate pass (`timing.certify_s / n`), certified
accuracy at each eps, the median radius, and the 10,000-point figure (s/pt x 10,000). The load
(`os.getloadavg`) is printed before and after each model. Prints a Markdown table (docs/certify.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "onnx-corpus"
ZOO_DATA = ROOT / "models" / "data" / "fashion_mnist_test_1k.npz"

import speccert  # noqa: E402
from speccert.bounds import certify  # noqa: E402

CHEAP = ["global", "pairwise", "margin"]
# (name, model, data, points, eps): the zoo at the CLI's default eps, the corpus model at its scale
MODELS = [
    ("zoo/cnn", ROOT / "models" / "cnn.onnx", ZOO_DATA, 64, [0.1, 0.25, 0.5]),
    ("zoo/mlp", ROOT / "models" / "mlp.onnx", ZOO_DATA, 200, [0.1, 0.25, 0.5]),
    ("eran_ffnnSIGMOID_6x200", CORPUS / "eran_ffnnSIGMOID_6x200" / "model.onnx", None, 36, [0.05, 0.1, 0.2]),
]


def _points(data: Path | None, model: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    if data is None:
        return np.load(model.parent / "x.npy")[:n], np.load(model.parent / "y.npy")[:n]
    arrays = np.load(str(data))
    return arrays["x"][:n], arrays["y"][:n]


def run(
    name: str, path: Path, data: Path | None, points: int, eps: list[float], kinds: list[str]
) -> list[dict]:
    graph = speccert.load(str(path))
    x, y = _points(data, path, points)
    rows = []
    for kind in kinds:
        row: dict = {
            "model": name,
            "kind": kind,
            "points": len(y),
            "eps": eps,
            "load_before": os.getloadavg()[0],
        }
        for mode in ("full", "eps"):
            rep = certify(
                graph, (x, y), eps, certificates=[*CHEAP, kind], radius_search=mode, lower_bound=False
            )
            row[f"s_pt_{mode}"] = rep.timing["certify_s"] / len(y)
            row[f"cra_{mode}"] = rep.certified_accuracies
            row[f"median_{mode}"] = float(np.median(rep.radius))
        row["load_after"] = os.getloadavg()[0]
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    out = [
        "| model (points) | kind | s/pt full | s/pt eps | speed-up | 10k points full -> eps | "
        "certified accuracy at eps, full -> eps | median radius full -> eps | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cra = ", ".join(
            f"{e:g}: {a:.1%} -> {b:.1%}"
            for e, a, b in zip(r["eps"], r["cra_full"], r["cra_eps"], strict=True)
        )
        out.append(
            f"| {r['model']} ({r['points']}) | {r['kind']} | {r['s_pt_full']:.3g} | {r['s_pt_eps']:.3g} | "
            f"{r['s_pt_full'] / r['s_pt_eps']:.1f}x | {_hours(r['s_pt_full'])} -> {_hours(r['s_pt_eps'])} | "
            f"{cra} | {r['median_full']:.3g} -> {r['median_eps']:.3g} | "
            f"{r['load_before']:.1f}-{r['load_after']:.1f} |"
        )
    return "\n".join(out)


def _hours(s_per_point: float) -> str:
    s = s_per_point * 10_000
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="", help="comma-separated substrings of model names")
    ap.add_argument("--kinds", default="local,crown")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    rows: list[dict] = []
    for name, path, data, points, eps in MODELS:
        if args.only and not any(s in name for s in args.only.split(",")):
            continue
        rows += run(name, path, data, points, eps, args.kinds.split(","))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
