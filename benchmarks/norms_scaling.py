"""How the cost of per-layer norms grows with the input size: ResNet-18 (random init, BN folded) at several
input sides, `auto` vs power iteration (100 steps) vs Fantastic-Four, side by side in one run.

    nice -n 10 python benchmarks/norms_scaling.py --sizes 32,64,112 [--widths 0.5,1] [--device cpu] [--json out.json]

Prints a Markdown table (seconds per method, and the conv max / median ratio of each method's value to
the best proven lower bound, as `speccert bench norms` does). Small inputs are not always cheaper:
where a layer's smaller side is <= 2048, `auto` certifies it with the explicit Gram matrix (`exact`,
n^3 work) instead of the torus bound.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from resnet18 import resnet18_graph, resnet18_module  # noqa: E402

from speccert.cli.bench_norms_cmd import bench_graph, summarise  # noqa: E402

METHODS = ("auto", "auto_upper", "auto_unrefined", "power", "fantastic4")


def measure(size: int, device: str, width: float = 1.0) -> dict[str, object]:
    graph = resnet18_graph(resnet18_module(width=width), size)
    t0 = time.perf_counter()
    summary = summarise(bench_graph(graph, device))
    return {"size": size, "width": width, "wall_s": time.perf_counter() - t0, "summary": summary}


def _ratio(summary: dict[str, dict[str, float]], method: str) -> str:
    return f"{summary[method]['conv_max_ratio']:.4f} / {summary[method]['conv_median_ratio']:.4f}"


def table(rows: list[dict[str, object]]) -> str:
    head = (
        "| input | width | auto s (upper + lower) | auto s (upper) | auto s (upper, before refine) "
        "| power(100) s | Fantastic-Four s | conv max / median: auto | before refine | Fantastic-Four |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["summary"]
        assert isinstance(s, dict)
        secs = " | ".join(f"{s[m]['seconds']:.1f}" for m in METHODS)
        lines.append(
            f"| {r['size']}×{r['size']} | {r.get('width', 1.0):g}× | {secs} | {_ratio(s, 'auto')} | {_ratio(s, 'auto_unrefined')} | {_ratio(s, 'fantastic4')} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="32,64,112", help="comma-separated input sides")
    ap.add_argument(
        "--widths", default="1", help="comma-separated channel multipliers (1 = 64/128/256/512 channels)"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = ap.parse_args()
    rows = []
    plan = [(int(s), float(w)) for w in args.widths.split(",") for s in args.sizes.split(",")]
    for size, width in plan:
        rows.append(measure(size, args.device, width))
        print(f"size {size} width {width:g}: {rows[-1]['wall_s']:.1f} s", file=sys.stderr, flush=True)
        print(
            table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True
        )  # each row as soon as it is known
        if args.json is not None:
            args.json.write_text(json.dumps(rows, indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
