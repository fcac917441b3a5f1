"""Real architectures through the three export routes: does speccert load them, and what does it say?

Builds torchvision / timm models (random init, eval mode, small inputs), exports each as a `.pt2`
(torch.export), a legacy ONNX file (`torch.onnx.export(dynamo=False)`) and a dynamo ONNX file
(`dynamo=True`, torch's default), then, each in its own process with a time limit, loads it with
speccert (the load includes the faithfulness check against torch / onnxruntime), and for a model that
loads computes the global Lipschitz upper bound (`lipschitz_bound`, `--method`, fft by default: sound
and fast; auto is tighter and minutes slower per model).

    /work/venv-importers/bin/python benchmarks/architectures.py --out docs/architectures.md

needs torchvision and timm (`pip install torchvision timm onnxscript`). `--only resnet18,mixer` picks
models; `--speccert DIR` measures another checkout (the "before" column of docs/architectures.md);
`--exports DIR` keeps the exported files so a second run only loads them. The Markdown table goes
between the `architectures:begin/end` markers of `--out`; the raw rows to `--json`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# name: (library, constructor name, input size, extra kwargs)
MODELS: dict[str, tuple[str, str, int, dict[str, Any]]] = {
    "resnet18": ("torchvision", "resnet18", 32, {}),
    "resnet18 (timm)": ("timm", "resnet18", 32, {}),
    "densenet121": ("torchvision", "densenet121", 32, {}),
    "squeezenet1_0": ("torchvision", "squeezenet1_0", 32, {}),
    "regnet_x_400mf": ("torchvision", "regnet_x_400mf", 32, {}),
    "mobilenet_v2": ("torchvision", "mobilenet_v2", 32, {}),
    "shufflenet_v2": ("torchvision", "shufflenet_v2_x1_0", 32, {}),
    "efficientnet_b0": ("torchvision", "efficientnet_b0", 32, {}),
    "convnext_atto": ("timm", "convnext_atto", 32, {}),
    "resmlp": ("timm", "resmlp_12_224", 32, {"img_size": 32}),
    "mixer": ("timm", "mixer_s16_224", 32, {"img_size": 32}),
    "vit_tiny": ("timm", "vit_tiny_patch16_224", 32, {"img_size": 32}),
    # VGG's adaptive pool to 7x7 needs >= 224 inputs (smaller ones would be upsampled).
    "vgg11_bn": ("torchvision", "vgg11_bn", 224, {}),
}
ROUTES = ("pt2", "onnx-legacy", "onnx-dynamo")


def build(name: str) -> tuple[Any, tuple[int, ...]]:
    import torch

    lib, ctor, size, kw = MODELS[name]
    torch.manual_seed(0)
    if lib == "torchvision":
        import torchvision

        model = getattr(torchvision.models, ctor)(weights=None, **kw)
    else:
        import timm

        model = timm.create_model(ctor, pretrained=False, **kw)
    return model.eval(), (3, size, size)


def export(name: str, route: str, path: Path) -> None:
    """Write `name` exported by `route` to `path`."""
    import torch

    model, shape = build(name)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        if route == "pt2":
            torch.export.save(torch.export.export(model, (x,), strict=False), str(path))
        else:
            torch.onnx.export(
                model,
                (x,),
                str(path),
                dynamo=route == "onnx-dynamo",
                input_names=["x"],
                output_names=["y"],
                dynamic_axes=None if route == "onnx-dynamo" else {"x": {0: "N"}, "y": {0: "N"}},
                **(
                    {"dynamic_shapes": ({0: torch.export.Dim("N", min=1, max=64)},)}
                    if route == "onnx-dynamo"
                    else {}
                ),
            )


def measure(path: Path, route: str, method: str) -> dict[str, Any]:  # noqa: PLR0911
    """Load with speccert (faithfulness check included), then the global Lipschitz upper bound."""
    import torch

    from speccert.bounds.lipschitz import lipschitz_bound
    from speccert.errors import SpeccertError, UnsupportedModelError
    from speccert.importers.onnx_import import load_onnx
    from speccert.importers.torch_import import load_torch_file

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        graph = load_torch_file(path) if route == "pt2" else load_onnx(path)
    except UnsupportedModelError as exc:
        kinds = sorted({p[0] for p in exc.problems})
        why = ", ".join(kinds) if kinds else str(exc).splitlines()[0][:160]
        return {
            "status": "refused",
            "why": why,
            "inspect_s": time.perf_counter() - t0,
            "msg_chars": len(str(exc)),
        }
    except SpeccertError as exc:
        return {"status": f"error (exit {exc.exit_code})", "why": str(exc).splitlines()[0][:160]}
    except Exception as exc:  # noqa: BLE001 - an internal error is what the table must show
        return {"status": "error (exit 5)", "why": f"{type(exc).__name__}: {str(exc).splitlines()[0][:140]}"}
    inspect_s = time.perf_counter() - t0
    if method == "none":
        return {"status": "loads", "why": "", "inspect_s": inspect_s, "L_upper": "-", "norms_s": 0.0}
    t1 = time.perf_counter()
    try:
        lb = lipschitz_bound(graph, method)
        upper: float | str = lb.upper
    except SpeccertError as exc:
        upper = f"refused: {str(exc).splitlines()[0][:100]}"
    return {
        "status": "loads",
        "why": "",
        "inspect_s": inspect_s,
        "L_upper": upper,
        "norms_s": time.perf_counter() - t1,
        "nodes": len(graph.nodes),
    }


def _one(name: str, route: str, exports: Path, speccert: Path, timeout: float, method: str) -> dict[str, Any]:
    suffix = ".pt2" if route == "pt2" else ".onnx"
    path = exports / f"{name.replace(' ', '_').replace('(', '').replace(')', '')}-{route}{suffix}"
    env = {**os.environ, "PYTHONPATH": str(speccert)}
    if not path.exists():
        tmp = path.with_name(f".{os.getpid()}-{path.name}")
        r = subprocess.run(
            [sys.executable, __file__, "--export", name, route, str(tmp)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if r.returncode != 0 or not tmp.exists():
            tail = (r.stderr.strip().splitlines() or ["?"])[-1][:160]
            return {"status": "export failed", "why": tail}
        tmp.replace(path)
    try:
        r = subprocess.run(
            [sys.executable, __file__, "--measure", route, str(path), method],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "why": f"> {timeout:.0f} s"}
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (r.stderr.strip().splitlines() or ["?"])[-1][:160]
        return {"status": f"crashed (rc {r.returncode})", "why": tail}
    return dict(json.loads(lines[-1]))


def _fmt(row: dict[str, Any]) -> str:
    if row["status"] != "loads":
        extra = f" ({row['inspect_s']:.1f} s)" if "inspect_s" in row else ""
        return f"{row['status']}: {row['why']}{extra}"
    up = row["L_upper"]
    if up == "-":
        return f"loads, {row['inspect_s']:.1f} s"
    up_s = f"{up:.3g}" if isinstance(up, float) else str(up)
    return f"loads, {row['inspect_s']:.1f} s; L ≤ {up_s} ({row.get('method', '')} {row['norms_s']:.1f} s)"


def markdown(rows: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = [
        "| architecture | input | " + " | ".join(f"`{r}`" for r in ROUTES) + " |",
        "|---|---|" + "---|" * len(ROUTES),
    ]
    for name, per_route in rows.items():
        size = MODELS[name][2]
        cells = [_fmt(per_route[r]).replace("|", "/") if r in per_route else "not measured" for r in ROUTES]
        lines.append(f"| {name} | 3×{size}×{size} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--export", nargs=3, metavar=("NAME", "ROUTE", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--measure", nargs=3, metavar=("ROUTE", "PATH", "METHOD"), help=argparse.SUPPRESS)
    ap.add_argument(
        "--method", default="fft", help="norm method for the Lipschitz bound (default fft; none: load only)"
    )
    ap.add_argument("--only", default="", help="comma-separated model names (default: all)")
    ap.add_argument("--exports", default="/tmp/speccert-arch-exports", help="folder for exported files")
    ap.add_argument(
        "--speccert", default=str(Path(__file__).resolve().parents[1]), help="checkout to measure"
    )
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per export and per measurement")
    ap.add_argument("--json", default="", help="write the rows as JSON here")
    ap.add_argument("--out", default="", help="Markdown file whose architectures table is replaced")
    ap.add_argument("--marker", default="architectures", help="table markers in --out: <!-- NAME:begin -->")
    ap.add_argument("--render-only", action="store_true", help="only render the rows already in --json")
    a = ap.parse_args()
    if a.export:
        export(a.export[0], a.export[1], Path(a.export[2]))
        return
    if a.measure:
        print(json.dumps(measure(Path(a.measure[1]), a.measure[0], a.measure[2])))
        return
    names = [n.strip() for n in a.only.split(",") if n.strip()] or list(MODELS)
    exports = Path(a.exports)
    exports.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    if a.json and Path(a.json).exists():  # resume: rows already measured are kept
        rows = json.loads(Path(a.json).read_text())
    for name in names:
        rows.setdefault(name, {})
        for route in ROUTES:
            if route in rows[name] or a.render_only:
                continue
            rows[name][route] = {
                **_one(name, route, exports, Path(a.speccert), a.timeout, a.method),
                "method": a.method,
            }
            print(f"{name:18s} {route:12s} {_fmt(rows[name][route])}", flush=True)
            if a.json:
                Path(a.json).write_text(json.dumps(rows, indent=1))
    rows = {n: rows[n] for n in MODELS if n in rows}
    if a.out:
        p = Path(a.out)
        text = p.read_text()
        begin, end = f"<!-- {a.marker}:begin -->\n", f"<!-- {a.marker}:end -->"
        head, rest = text.split(begin)
        _, tail = rest.split(end)
        p.write_text(head + begin + markdown(rows) + end + tail)


if __name__ == "__main__":
    main()
