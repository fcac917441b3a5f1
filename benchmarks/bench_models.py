"""What benchmarks/certificates.py and benchmarks/peer_lirpa.py share: the models they run (the
VNN-COMP corpus and the zoo, each with its data and eps), the first points of a data set, and the
command line loop (--points, --only, --json; a JSON row per model on stderr, a Markdown table on
stdout)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "onnx-corpus"
ZOO_DATA = ROOT / "models" / "data" / "fashion_mnist_test_1k.npz"
Data = tuple[np.ndarray, np.ndarray] | Path
Model = tuple[str, Path, Data, float]


def models(corpus: Path = CORPUS) -> list[Model]:
    """(name, model file, data, eps) for every corpus model and every zoo ONNX model."""
    out: list[Model] = []
    for d in sorted(p for p in corpus.iterdir() if (p / "model.onnx").exists()):
        out.append((d.name, d / "model.onnx", (np.load(d / "x.npy"), np.load(d / "y.npy")), 0.1))
    manifest = json.loads((ROOT / "models" / "manifest.json").read_text())
    for name, entry in manifest["models"].items():
        out.append((f"zoo/{name}", ROOT / "models" / entry["files"]["onnx"]["path"], ZOO_DATA, 0.5))
    return out


def first_points(data: Data, points: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the first `points` points of a data set."""
    if isinstance(data, tuple):
        return np.asarray(data[0])[:points], np.asarray(data[1])[:points]
    arrays = np.load(str(data))
    return arrays["x"][:points], arrays["y"][:points]


def main_loop(
    doc: str,
    run_model: Callable[[str, Path, Data, float, argparse.Namespace], dict | None],
    table: Callable[[list[dict]], str],
    add_args: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """Parse the common options, run every selected model (rows printed as they come), print the table."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--points", type=int, default=20)
    ap.add_argument(
        "--only", default="", help="comma-separated substrings of model names (NAME$: exactly NAME)"
    )
    ap.add_argument("--json", default="", help="also write the rows here")
    if add_args is not None:
        add_args(ap)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name, path, data, eps in models():
        if args.only and not any(
            name == s[:-1] if s.endswith("$") else s in name for s in args.only.split(",")
        ):
            continue
        row = run_model(name, path, data, eps, args)
        if row is None:
            continue
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    print(table(rows))
