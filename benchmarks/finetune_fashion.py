"""Benchmark (not a CI test): fine-tune the zoo's standard CNN on Fashion-MNIST with each named recipe
and each single penalty side by side under the same epoch budget, and compare with the baseline a user
would otherwise pick: retraining the same architecture from scratch with
torch.nn.utils.parametrizations.spectral_norm on every layer, and (with --deel-python) the 1-Lipschitz
library a user would otherwise pick, deel-torchlip, trained with its own recipe in its own virtual
environment by benchmarks/finetune_deel.py (never imported here).

Every number in the table comes from `speccert.certify` (sound bounds; the empirical lower bound of L
from its gradient search) on a held-out test subset, pixels in [0, 1], L2 radii 0.25 / 0.5 / 1.0, of
the model *file* each run wrote. Fine-tuning stops early if the targets (cra@0.5>=0.75, clean>=0.85)
hold on a separate validation subset drawn from the training set (by default: --val-n training images
held out, every other training image trains, the whole 10,000-image test set certifies).

One more row (--zoo-best, on by default): the options `python models/finetune.py cnn` makes the zoo's
models/cnn_robust.onnx with (models/finetune.py's ROBUST/EXTRA: lmt-rescale, lr 3e-3, ReLU -> MaxMin,
GloRo loss at eps 0.6, weight average 0.999), at this table's epoch budget instead of the zoo's 20.

    python benchmarks/finetune_fashion.py --epochs 5 --deel-python /work/venv-deel/bin/python  # full data
    python benchmarks/finetune_fashion.py --train-n 10000 --epochs 3 --test-n 1000   # reduced, CPU
    python benchmarks/finetune_fashion.py --recipes lmt-rescale --penalties lmt --no-baseline

Writes a Markdown table to stdout and JSON to --json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "models"))

from architectures import cnn  # noqa: E402

from speccert.bounds import certify  # noqa: E402
from speccert.data import Dataset, load_data  # noqa: E402
from speccert.importers import load  # noqa: E402
from speccert.importers.torch_import import from_module  # noqa: E402
from speccert.training.finetune import finetune  # noqa: E402
from speccert.training.penalties import PENALTIES  # noqa: E402
from speccert.training.recipes import RECIPES  # noqa: E402

ZooOptions = dict[str, Any]

EPS = (0.25, 0.5, 1.0)
TARGETS = ["cra@0.5>=0.75", "clean>=0.85"]


def subsets(
    data: str, train_n: int | None, val_n: int, test_n: int, seed: int
) -> tuple[Dataset, Dataset, Dataset]:
    """Train: the first train_n of a seeded permutation of the training set (None: all but val_n);
    val: the next val_n (training images, never test ones); test: test_n of the test set."""
    tr = load_data(data, "train")
    te = load_data(data, "test")
    if train_n is None:
        train_n = len(tr) - val_n
    if train_n <= 0 or train_n + val_n > len(tr) or not 0 < test_n <= len(te):
        sys.exit(f"error: --train-n + --val-n must be <= {len(tr)} and --test-n <= {len(te)}")
    perm = np.random.default_rng(seed).permutation(len(tr))
    ti, vi = np.sort(perm[:train_n]), np.sort(perm[train_n : train_n + val_n])
    test_i = np.sort(np.random.default_rng(seed + 1).permutation(len(te))[:test_n])
    pick = lambda d, i, s: Dataset(d.x[i], d.y[i], f"{d.source}[{s}]")  # noqa: E731
    return pick(tr, ti, "train"), pick(tr, vi, "val"), pick(te, test_i, "test")


def row(name: str, graph, test: Dataset, device: str, seconds: float, epochs: int, note: str = "") -> dict:  # noqa: ANN001
    rep = certify(graph, test, EPS, device=device, lower_bound=True)
    return {
        "method": name,
        "clean": rep.clean_accuracy,
        **{f"cra@{e:g}": rep.certified_accuracy(e) for e in EPS},
        "L_upper": rep.lipschitz_upper,
        "L_lower": rep.lipschitz_lower,
        "epochs": epochs,
        "minutes": seconds / 60.0,
        "note": note,
    }


def run_finetune(  # noqa: PLR0913
    label: str,
    kind: str,
    name: str,
    train: Dataset,
    val: Dataset,
    test: Dataset,
    a,  # noqa: ANN001
    maxmin: bool = False,
    extra: ZooOptions | None = None,
    tag: str = "",
) -> dict:
    """One fine-tuning run (a recipe or a single penalty; ReLU -> MaxMin first when `maxmin`; `extra`:
    more keyword arguments of `finetune`, written to a file named with `tag`), certified from the file
    it wrote."""
    t0 = time.perf_counter()
    out = Path(a.work) / f"cnn-{kind}-{name}{'-maxmin' if maxmin else ''}{tag}.onnx"
    chosen = {"recipe": name} if kind == "recipe" else {"penalty": name, "lr": a.lr}
    chosen |= extra or {}
    try:
        res = finetune(
            a.model,
            train,
            val,
            targets=TARGETS,
            epochs=a.epochs,
            batch_size=a.batch_size,
            out=out,
            overwrite=True,
            seed=a.seed,
            device=a.device,
            allow_activation_change=maxmin,
            **chosen,
        )
    except Exception as exc:  # noqa: BLE001 - e.g. curvature on a ReLU net: reported, not fatal
        return {"method": label, "note": f"not run: {exc}"}
    note = "targets met" if res.met else f"best epoch {res.best_epoch}"
    return row(label, load(str(out)), test, a.device, time.perf_counter() - t0, res.history[-1].epoch, note)


def zoo_best() -> tuple[str, ZooOptions]:
    """The recipe and `finetune` keyword arguments of `python models/finetune.py cnn` (its epochs and
    targets excepted: the table's budget and targets apply), read from models/finetune.py itself."""
    from finetune import recipe_entry  # models/finetune.py (models/ is on sys.path)

    entry = recipe_entry("cnn")
    options = {"lr", "ema", "allow-activation-change", "penalty-options"}
    unknown = set(entry) - options - {"recipe", "penalty", "epochs", "targets"}
    if unknown:  # a new zoo option this script does not pass on: say so rather than drop it
        sys.exit(f"error: models/finetune.py's cnn uses options this benchmark does not know: {unknown}")
    kwargs = {k.replace("-", "_"): v for k, v in entry.items() if k in options}
    return str(entry["recipe"]), kwargs


def table(rows: list[dict]) -> str:
    head = "| method | clean | " + " | ".join(f"CRA @ {e:g}" for e in EPS)
    lines = [head + " | L upper | L lower | epochs | minutes | note |"]
    lines.append("|---|---|" + "---|" * len(EPS) + "---|---|---|---|---|")
    cols = ["clean", *(f"cra@{e:g}" for e in EPS)]
    for r in rows:
        if "clean" not in r:
            lines.append(
                f"| {r['method']} | - | "
                + " | ".join("-" for _ in EPS)
                + f" | - | - | - | - | {r['note'][:90]} |"
            )
            continue
        low = "-" if r["L_lower"] is None else f"{r['L_lower']:.3g}"
        up = "-" if r["L_upper"] is None else f"{r['L_upper']:.3g}"
        lines.append(
            f"| {r['method']} | "
            + " | ".join(f"{r[c]:.1%}" for c in cols)
            + f" | {up} | {low} | {r['epochs']} | {r['minutes']:.1f} | {r['note']} |"
        )
    return "\n".join(lines)


def deel_rows(a, test: Dataset) -> list[dict]:  # noqa: ANN001
    """deel-torchlip (GroupSort2 and ReLU) trained by finetune_deel.py in its own venv: a row with its
    own certificate, and a row of speccert certifying the ONNX file it wrote (or why it could not)."""
    rows = []
    for act in ("groupsort2", "relu"):
        out, js = Path(a.work) / f"deel-{act}.onnx", Path(a.work) / f"deel-{act}.json"
        cmd = [a.deel_python, str(ROOT / "benchmarks" / "finetune_deel.py"), "--data", a.data]
        cmd += ["--train-n", str(a.train_n), "--test-n", str(a.test_n), "--epochs", str(a.epochs)]
        cmd += ["--seed", str(a.seed), "--activation", act, "--out", str(out), "--json", str(js)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            rows.append({"method": f"deel-torchlip {act}", "note": f"failed: {proc.stderr[-200:]}"})
            continue
        own = json.loads(js.read_text())
        rows.append(own | {"L_upper": None, "L_lower": None, "note": "own formula (f_y - f_2nd) / 2"})
        label = f"deel-torchlip {act} (speccert)"
        try:
            rows.append(
                row(label, load(str(out)), test, a.device, own["minutes"] * 60, a.epochs, "from scratch")
            )
        except Exception as exc:  # noqa: BLE001 - an importer refusal is the finding, reported
            rows.append({"method": label, "note": f"refused: {str(exc)[:80]}"})
    return rows


def spectral_norm_baseline(train: Dataset, epochs: int, lr: float, batch: int, device: str, seed: int):  # noqa: ANN201
    """Retrain the zoo CNN from scratch with torch's spectral_norm parametrisation on every layer."""
    torch.manual_seed(seed)
    net = cnn()
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            torch.nn.utils.parametrizations.spectral_norm(m)
    net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    x = torch.from_numpy(train.x).reshape(-1, 1, 28, 28).to(device)
    y = torch.from_numpy(train.y).to(device)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(train), generator=g).split(batch):
            loss = nn.functional.cross_entropy(net(x[idx.to(device)]), y[idx.to(device)])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and torch.nn.utils.parametrize.is_parametrized(m):
            torch.nn.utils.parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return from_module(net.cpu(), (1, 28, 28))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "cnn.onnx"))
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--train-n", type=int, default=None, help="default: every training image but --val-n")
    ap.add_argument("--val-n", type=int, default=1000)
    ap.add_argument("--test-n", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recipes", default=",".join(RECIPES.keys()), help="named recipes ('' for none)")
    ap.add_argument("--penalties", default=",".join(PENALTIES.keys()), help="single penalties ('' for none)")
    ap.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--deel-python", default=None, help="python of a venv with deel-torchlip")
    ap.add_argument("--work", default="/tmp/speccert-bench-finetune")
    ap.add_argument(
        "--activation-change",
        choices=("off", "maxmin", "both"),
        default="off",
        help="fine-tune with ReLU -> MaxMin (--allow-activation-change), without, or both side by side",
    )
    ap.add_argument(
        "--zoo-best",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add a row with the options of `python models/finetune.py cnn` at this epoch budget",
    )
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    train, val, test = subsets(a.data, a.train_n, a.val_n, a.test_n, a.seed)
    a.train_n = len(train)  # resolved: finetune_deel.py draws the same images from the same permutation
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = [row("input model (zoo cnn)", load(a.model), test, a.device, 0.0, 0)]
    print(rows[0], file=sys.stderr, flush=True)
    if a.baseline:
        t0 = time.perf_counter()
        g = spectral_norm_baseline(train, a.epochs, a.lr, a.batch_size, a.device, a.seed)
        rows.append(
            row(
                "retrain + torch spectral_norm",
                g,
                test,
                a.device,
                time.perf_counter() - t0,
                a.epochs,
                "from scratch",
            )
        )
        print(rows[-1], file=sys.stderr, flush=True)
        save(a, rows)
    if a.deel_python:
        rows += deel_rows(a, test)
        print(rows[-4:], file=sys.stderr, flush=True)
    save(a, rows)
    for label, kind, name, maxmin, extra in jobs(a):
        tag = "-zoo" if extra else ""
        rows.append(run_finetune(label, kind, name, train, val, test, a, maxmin, extra, tag))
        print(rows[-1], file=sys.stderr, flush=True)
        save(a, rows)
    print(table(rows))


def jobs(a) -> list[tuple[str, str, str, bool, ZooOptions | None]]:  # noqa: ANN001
    """The fine-tuning rows in run order: each recipe, the zoo's best options, each single penalty."""
    variants = {"off": (False,), "maxmin": (True,), "both": (False, True)}[a.activation_change]
    each = lambda kind, names: [  # noqa: E731
        (f"{kind} {n}" + (" + MaxMin" if m else ""), kind, n, m, None)
        for n in names.split(",")
        if n
        for m in variants
    ]
    out = each("recipe", a.recipes)
    if a.zoo_best:
        recipe, kwargs = zoo_best()
        maxmin = bool(kwargs.pop("allow_activation_change", False))
        shown = {k: v for k, v in kwargs.items() if k != "penalty_options"} | kwargs.get(
            "penalty_options", {}
        )
        label = f"zoo best (models/finetune.py cnn): recipe {recipe}, " + ", ".join(
            f"{k} {v:g}" for k, v in shown.items()
        )
        out.append((label + (" + MaxMin" if maxmin else ""), "recipe", recipe, maxmin, kwargs))
    return out + each("penalty", a.penalties)


def save(a, rows: list[dict]) -> None:  # noqa: ANN001
    """Write the rows so far to --json (after every row: a long run killed midway keeps its rows)."""
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
