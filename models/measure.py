"""Regenerate the certificate table of models/README.md by running ``speccert certify`` on each model.

Usage (from the repository root)::

    python models/measure.py                 # every model in models/manifest.json
    python models/measure.py cnn cnn_lip     # some of them (the other rows are kept)

For each model this runs exactly the command printed in its table row,

    speccert certify models/NAME.onnx --data models/data/fashion_mnist_test_1k.npz --eps 0.25,0.5,1 [--second-order]

with ``--json`` added to read the figures back, stores the figures in ``models/measurements.json``
and rewrites the table between the ``<!-- measure:begin -->`` / ``<!-- measure:end -->`` markers of
models/README.md. Nothing in the table is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MANIFEST = HERE / "manifest.json"
MEASUREMENTS = HERE / "measurements.json"
README = HERE / "README.md"
DATA = "models/data/fashion_mnist_test_1k.npz"
EPS = "0.25,0.5,1"
BEGIN, END = "<!-- measure:begin -->", "<!-- measure:end -->"
ZOO_BEGIN, ZOO_END = "<!-- zoo:begin -->", "<!-- zoo:end -->"


def rows_for(name: str, entry: dict) -> list[tuple[str, list[str]]]:
    """(row key, speccert argv) pairs: every model plain, smooth ones also with --second-order."""
    base = ["speccert", "certify", f"models/{entry['files']['onnx']['path']}", "--data", DATA, "--eps", EPS]
    rows = [(name, base)]
    if entry["architecture"].startswith("smooth"):
        rows.append((f"{name} (second order)", [*base, "--second-order"]))
    return rows


def run_certify(argv: list[str]) -> tuple[dict, float]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        # `python -m speccert` is the `speccert` console script, without relying on PATH
        cmd = [sys.executable, "-m", "speccert", *argv[1:], "--json", str(report)]
        start = time.time()
        # passive OpenMP waiting only changes speed on a shared CPU (see train.py), never a figure
        env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
        seconds = time.time() - start
        if proc.returncode != 0:
            raise SystemExit(f"{shlex.join(argv)} failed ({proc.returncode}):\n{proc.stderr}")
        return json.loads(report.read_text()), seconds


def figures(report: dict, argv: list[str], seconds: float) -> dict:
    cert = report["certificate"]
    return {
        "command": shlex.join(argv),
        "clean_accuracy": cert["clean_accuracy"],
        "lipschitz_upper": report["lipschitz"]["upper"],
        "lipschitz_lower": report["lipschitz"]["lower"],
        "eps": cert["eps"],
        "certified_accuracy": cert["certified_accuracy"],
        "median_radius": cert["median_radius"],
        "wins": cert["wins"],
        "n": cert["n"],
        "model_sha256": report["model"]["sha256"],
        "seconds": round(seconds, 1),
    }


def table(measurements: dict) -> str:
    eps = next(iter(measurements.values()))["eps"]
    head = (
        "| model | clean acc. | L upper (lower) | "
        + " | ".join(f"cert. acc. @ {e:g}" for e in eps)
        + " | median radius | command |"
    )
    sep = "|" + "---|" * (5 + len(eps))
    lines = [head, sep]
    for key, m in measurements.items():
        certs = " | ".join(f"{a:.1%}" for a in m["certified_accuracy"])
        lines.append(
            f"| {key} | {m['clean_accuracy']:.1%} | {m['lipschitz_upper']:.4g} ({m['lipschitz_lower']:.3g}) | "
            f"{certs} | {m['median_radius']:.3g} | `{m['command']}` |"
        )
    return "\n".join(lines)


def zoo_table(manifest: dict) -> str:
    """The models table, from models/manifest.json (written by models/train.py)."""
    lines = [
        "| model | architecture | params | test acc. (10k) | subset acc. (1k) | .onnx / .pt2 KB | epochs (budget) | "
        "train s | command |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in manifest.items():
        r = m["recipe"]
        recipe = f"{r['epochs']}"
        if r.get("lipschitz_margin_eps"):
            recipe += f", LMT eps {r['lipschitz_margin_eps']:g}"
        if "finetuned_from" in m:
            how = r.get("recipe", r["penalty"])
            if r.get("time-budget"):  # --time-budget, minutes: the run may end before its epochs
                how += f", {r['time-budget']:g} min budget"
            recipe += f" (speccert finetune of {m['finetuned_from']}, {how})"
        sizes = " / ".join(
            f"{m['files'][f]['bytes'] / 1000:.0f}" if f in m["files"] else "-" for f in ("onnx", "pt2")
        )
        lines.append(
            f"| {name} | {m['architecture']} | {m['parameters']:,} | {m['test_accuracy']:.2%} | "
            f"{m['subset_accuracy']:.1%} | {sizes} | {recipe} | {m['train_seconds']:.0f} | `{m['command']}` |"
        )
    return "\n".join(lines)


def replace_between(text: str, begin: str, end: str, body: str) -> str:
    if begin not in text or end not in text:
        raise SystemExit(f"{README}: markers {begin} / {end} not found")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def main() -> None:
    manifest = json.loads(MANIFEST.read_text())["models"]
    p = argparse.ArgumentParser(description="Regenerate models/README.md's certificate table.")
    p.add_argument("names", nargs="*", default=list(manifest), help="models to measure (default: all)")
    p.add_argument("--tables-only", action="store_true", help="only re-render the tables from the JSON files")
    a = p.parse_args()
    if a.tables_only:
        a.names = []
    unknown = [n for n in a.names if n not in manifest]
    if unknown:
        p.error(f"unknown model(s) {unknown}; known: {list(manifest)}")
    measurements = json.loads(MEASUREMENTS.read_text()) if MEASUREMENTS.exists() else {}
    for name in a.names:
        for key, argv in rows_for(name, manifest[name]):
            report, seconds = run_certify(argv)
            measurements[key] = figures(report, argv, seconds)
            print(
                f"{key}: {json.dumps(measurements[key]['certified_accuracy'])} ({seconds:.0f}s)",
                file=sys.stderr,
            )
    measurements = {k: measurements[k] for k in sorted(measurements)}
    MEASUREMENTS.write_text(json.dumps(measurements, indent=2) + "\n")
    text = replace_between(README.read_text(), ZOO_BEGIN, ZOO_END, zoo_table(manifest))
    if measurements:
        text = replace_between(text, BEGIN, END, table(measurements))
    README.write_text(text)


if __name__ == "__main__":
    main()
