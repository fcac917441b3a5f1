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
_TORCHVISION_SCHEMAS: list[Any] = []  # keeps the fallback op schemas registered (see import_torchvision)


def import_torchvision() -> Any:
    """torchvision, also where its C++ ops cannot load: PyPI's Linux torchvision wheel links the CUDA
    torch libraries, so beside torch's CPU build (the only build this machine's registries carry) its
    `_C.so` fails to load and torchvision 0.28's import then dies registering a fake kernel for
    `torchvision::nms`. The models need none of those ops (detection only), so the two schemas the
    import touches are declared and the import retried; `torchvision.ops.nms` would still fail.
    """
    try:
        import torchvision
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        import torch

        for mod in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[mod]
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TORCHVISION_SCHEMAS.append(lib)
        import torchvision
    return torchvision


def build(name: str, size: int | None = None) -> tuple[Any, tuple[int, ...]]:
    import torch

    lib, ctor, default_size, kw = MODELS[name]
    size = size or default_size
    if "img_size" in kw:
        kw = {**kw, "img_size": size}
    torch.manual_seed(0)
    if lib == "torchvision":
        model = getattr(import_torchvision().models, ctor)(weights=None, **kw)
    else:
        import_torchvision()  # timm imports it
        import timm

        model = timm.create_model(ctor, pretrained=False, **kw)
    return model.eval(), (3, size, size)


def export(name: str, route: str, path: Path, size: int | None = None) -> None:
    """Write `name` exported by `route` to `path` (input `size` x `size`, default the table's)."""
    import torch

    model, shape = build(name, size)
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
    rss0 = _rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
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
    memory = {
        # = wall time on an idle core (one torch thread), with a child process's (onnxruntime's check)
        "inspect_cpu_s": time.process_time() - c0 + _children_cpu_s(),
        "inspect_mb": _peak_mb() - rss0,  # peak during the load above what the imports took
        "params_mb": sum(p.numel() * p.element_size() for p in graph.to_torch().parameters()) / 2**20,
        # a big ONNX model's onnxruntime check runs in a child process (importers/ort_reference.py)
        "child_mb": _children_peak_mb(),
    }
    if method == "none":
        return {
            "status": "loads",
            "why": "",
            "inspect_s": inspect_s,
            "L_upper": "-",
            "norms_s": 0.0,
            **memory,
        }
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
        **memory,
    }


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")) / 1024


def _children_cpu_s() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _children_peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def certify_224(name: str, exports: Path, speccert: Path, timeout: float) -> dict[str, Any]:
    """`speccert certify` of the .pt2 export at 3x224x224 on 8 random points (fantastic4 norms: the
    point is memory, not tightness), under /usr/bin/time -v: exit code, seconds, peak RSS."""
    stem = name.replace(" ", "_").replace("(", "").replace(")", "")
    path, data = exports / f"{stem}-pt2-224.pt2", exports / "random-224.npz"
    env = {**os.environ, "PYTHONPATH": str(speccert)}
    if not data.exists():
        import numpy as np

        rng = np.random.default_rng(0)
        np.savez(data, x=rng.random((8, 3, 224, 224)).astype("float32"), y=rng.integers(0, 1000, 8))
    if not path.exists():
        cmd = [sys.executable, __file__, "--export", name, "pt2", str(path), "--size", "224"]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            return {"status": "export failed", "why": (r.stderr.strip().splitlines() or ["?"])[-1][:160]}
    report = exports / f"{stem}-certify-224.json"
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "speccert", "certify", str(path), "--data", str(data)]
    cmd += ["--method", "fantastic4", "--lower-points", "2", "--json", str(report)]
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "why": f"> {timeout:.0f} s"}
    rss = [ln.split(":")[1] for ln in r.stderr.splitlines() if "Maximum resident set size" in ln]
    row: dict[str, Any] = {
        "status": f"exit {r.returncode}",
        "seconds": time.perf_counter() - t0,
        "peak_mb": int(rss[0]) / 1024 if rss else None,
    }
    if r.returncode == 0 and report.exists():
        row["L_upper"] = json.loads(report.read_text())["lipschitz"]["upper"]
    else:
        errs = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
        row["why"] = (errs or ["?"])[0][:160]
    return row


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
    mem = f" ({row['inspect_cpu_s']:.1f} s CPU), +{row['inspect_mb']:.0f} MB" if "inspect_mb" in row else ""
    if row.get("child_mb"):
        mem += f" (onnxruntime's process {row['child_mb']:.0f} MB)"
    if up == "-":
        return f"loads, {row['inspect_s']:.1f} s{mem}"
    up_s = f"{up:.3g}" if isinstance(up, float) else str(up)
    return (
        f"loads, {row['inspect_s']:.1f} s{mem}; L ≤ {up_s} ({row.get('method', '')} {row['norms_s']:.1f} s)"
    )


def _fmt_certify(row: dict[str, Any] | None) -> str:
    if row is None:
        return "not measured"
    if row["status"] != "exit 0":
        return f"{row['status']}: {row.get('why', '')}"
    note = f" ({row['note']})" if row.get("note") else ""
    return f"completes, {row['seconds']:.0f} s, peak {row['peak_mb'] / 1024:.1f} GB{note}"


def markdown(rows: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = [
        "| architecture | input | params | "
        + " | ".join(f"`{r}`" for r in ROUTES)
        + " | certify at 224 (`pt2`) |",
        "|---|---|---|" + "---|" * (len(ROUTES) + 1),
    ]
    for name, per_route in rows.items():
        size = MODELS[name][2]
        cells = [_fmt(per_route[r]).replace("|", "/") if r in per_route else "not measured" for r in ROUTES]
        cells.append(_fmt_certify(per_route.get("certify224")).replace("|", "/"))
        mb = next((r["params_mb"] for r in per_route.values() if "params_mb" in r), None)
        params = f"{mb:.0f} MB" if mb is not None else "–"
        lines.append(f"| {name} | 3×{size}×{size} | {params} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fill_bounds(
    rows: dict[str, dict[str, dict[str, Any]]], old: dict[str, dict[str, dict[str, Any]]]
) -> None:
    """L and norms seconds of an earlier run (same exported files) for rows measured load-only."""
    for name, per_route in rows.items():
        for route, row in per_route.items():
            prev = old.get(name, {}).get(route, {})
            if row.get("L_upper") == "-" and prev.get("status") == "loads" and "L_upper" in prev:
                row.update(L_upper=prev["L_upper"], norms_s=prev["norms_s"], method=prev.get("method", ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--export", nargs=3, metavar=("NAME", "ROUTE", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument(
        "--certify-224", action="store_true", help="also run `speccert certify` at 224x224 (.pt2; peak RSS)"
    )
    ap.add_argument(
        "--bounds-from",
        default="",
        help="JSON of an earlier run: its L and norms seconds fill rows measured with --method none",
    )
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
        export(a.export[0], a.export[1], Path(a.export[2]), a.size or None)
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
        if a.certify_224 and "certify224" not in rows[name] and not a.render_only:
            rows[name]["certify224"] = certify_224(name, exports, Path(a.speccert), a.timeout)
            print(f"{name:18s} certify-224  {_fmt_certify(rows[name]['certify224'])}", flush=True)
            if a.json:
                Path(a.json).write_text(json.dumps(rows, indent=1))
    if a.bounds_from:
        _fill_bounds(rows, json.loads(Path(a.bounds_from).read_text()))
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
